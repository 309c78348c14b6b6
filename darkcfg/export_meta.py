"""What an exported model needs to be used without darkcfg: stored in every artefact, read back by ``info``.

ONNX files carry it as ``metadata_props`` (one key per entry, JSON values), ``.pt2`` and
TorchScript files as the extra file ``darkcfg.json``.  Keys: ``darkcfg_version``, ``cfg_name``,
``cfg_sha256``, ``input`` (width, height, channels, layout, range, resize: letterbox or
stretch), ``heads`` (kind, layer, classes, anchors, mask, stride, ...), ``names``, ``outputs``
and, for ``--decode/--nms`` exports, ``postprocess``; a ``--dynamic-size`` export adds
``dynamic_size`` (width, height traced at, step, min_width, min_height, rule: the sizes at which
it is exact; :func:`darkcfg.dynamic_size.check_size` checks one).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any, Optional, Sequence

EXTRA_FILE = "darkcfg.json"
MODEL_SUFFIXES = (".onnx", ".pt2", ".pt", ".ts", ".torchscript")


def build_metadata(model: Any, names: Sequence[str], outputs: Sequence[str],
                   postprocess: Optional[dict] = None) -> dict:
    """Metadata of ``model`` (a :class:`~darkcfg.Darknet`) as a JSON-able dict."""
    from . import __version__

    graph, net = model.graph, model.graph.net
    cfg = Path(graph.path)
    heads = []
    for spec in graph.layers:
        a = spec.attrs
        if spec.kind in ("yolo", "Gaussian_yolo"):
            heads.append({"kind": spec.kind, "layer": spec.index, "classes": a.classes, "mask": list(a.mask),
                          "anchors": [list(p) for p in a.masked_anchors], "stride": [net.width // spec.out_shape[2],
                                                                                      net.height // spec.out_shape[1]],
                          "grid": [spec.out_shape[2], spec.out_shape[1]], "scale_x_y": a.scale_x_y,
                          "new_coords": a.new_coords, "nms_kind": a.nms_kind, "beta_nms": a.beta_nms,
                          "anchor_units": "network-input pixels"})
        elif spec.kind == "region":
            heads.append({"kind": "region", "layer": spec.index, "classes": a.classes, "coords": a.coords,
                          "anchors": [list(p) for p in a.anchors[:a.num]], "anchor_units": "grid cells",
                          "grid": [spec.out_shape[2], spec.out_shape[1]], "softmax": a.softmax, "tree": a.tree,
                          "stride": [net.width // spec.out_shape[2], net.height // spec.out_shape[1]]})
        elif spec.kind == "detection":
            heads.append({"kind": "detection", "layer": spec.index, "classes": a.classes, "side": a.side,
                          "num": a.num, "coords": a.coords, "sqrt": a.sqrt})
    meta = {
        "darkcfg_version": __version__,
        "cfg_name": cfg.name,
        "cfg_sha256": hashlib.sha256(cfg.read_bytes()).hexdigest() if cfg.is_file() else "",
        "input": {"name": "images", "width": net.width, "height": net.height, "channels": net.channels,
                  "layout": "NCHW", "color": "RGB", "range": [0.0, 1.0],
                  "resize": "letterbox" if net.letter_box else "stretch"},
        "heads": heads,
        "names": list(names),
        "outputs": list(outputs),
    }
    if postprocess is not None:
        meta["postprocess"] = postprocess
    return meta


def add_onnx_metadata(path: str, meta: dict) -> None:
    """Write ``meta`` into the ONNX file's ``metadata_props`` (one entry per key, JSON values)."""
    import onnx

    proto = onnx.load(path)
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    proto.producer_name = "darkcfg"
    onnx.save(proto, path)


def read_metadata(path: "str | Path") -> dict:
    """The darkcfg metadata of an exported ``.onnx``, ``.pt2`` or TorchScript file ({} if none)."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        return {p.key: _json_or_text(p.value) for p in proto.metadata_props}
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not an ONNX, .pt2 or TorchScript file")
    with zipfile.ZipFile(path) as z:  # both keep extra files as <archive>/extra/<name>
        for name in z.namelist():
            if name.endswith("/extra/" + EXTRA_FILE) or name == "extra/" + EXTRA_FILE:
                return json.loads(z.read(name).decode("utf-8"))
    return {}


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def format_metadata(path: "str | Path", meta: dict) -> list[str]:
    """Readable lines for ``darkcfg info MODEL``."""
    if not meta:
        return [f"{path}: no darkcfg metadata (not exported by darkcfg?)"]
    inp = meta.get("input", {})
    lines = [f"{path}: {meta.get('cfg_name', '?')} (sha256 {meta.get('cfg_sha256', '?')}), darkcfg "
             f"{meta.get('darkcfg_version', '?')}",
             f"input {inp.get('name', 'images')}: N x {inp.get('channels')} x {inp.get('height')} x {inp.get('width')} "
             f"{inp.get('color', 'RGB')} in {inp.get('range')}, {inp.get('resize')}"]
    if "dynamic_size" in meta:
        dyn = meta["dynamic_size"]
        lines.append(f"dynamic size: {dyn.get('rule')} (traced at {dyn.get('width')} x {dyn.get('height')}; "
                     "heads' grid and stride below are at that size)")
    for h in meta.get("heads", []):
        extra = ", ".join(f"{k}={h[k]}" for k in ("stride", "mask", "anchors", "nms_kind") if k in h)
        lines.append(f"head layer {h.get('layer')}: [{h.get('kind')}] classes={h.get('classes')}, {extra}")
    names = meta.get("names", [])
    lines.append(f"names ({len(names)}): " + ", ".join(names[:10]) + (" ..." if len(names) > 10 else ""))
    lines.append("outputs: " + ", ".join(meta.get("outputs", [])))
    if "postprocess" in meta:
        lines.append("postprocess: " + json.dumps(meta["postprocess"]))
    return lines
