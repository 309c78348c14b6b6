"""Hostile cfg and weights input: every case ends in a darkcfg error naming where, never a
traceback, a hang, a huge allocation or silently different numbers (issue 11 §3).

Each cfg here is written inline; the expected behaviour is Darknet's own reading of the
text (``darknet-format.md`` §1) or a refusal with the file, line and layer.
"""

from __future__ import annotations

import io
import os
import stat
import threading
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import darkcfg
from darkcfg.cfg import parse_cfg_text, read_cfg
from darkcfg.errors import CfgError, DarkcfgError, WeightsError
from darkcfg.graph import build_graph
from darkcfg.limits import Limits
from darkcfg.weights import synthetic_weights

NET = "[net]\nwidth=32\nheight=32\nchannels=3\n"


def graph_of(text: str, **kw):
    return build_graph(parse_cfg_text(text, "bad.cfg"), **kw)


# ----------------------------------------------------------------------------- memory bombs
BOMBS = {
    # (cfg text, line of the layer named in the error)
    "yolo-num": (NET + "[convolutional]\nfilters=18\nsize=1\n[yolo]\nclasses=1\nmask=0,1,2\nnum=1000000000\n", 11),
    "filters": (NET + "[convolutional]\nfilters=2000000000\nsize=1\n", 5),
    "upsample": (NET + "[upsample]\nstride=16\n" * 6, 9),
    "padding": (NET + "[convolutional]\nfilters=4\nsize=3\npadding=1000000\n", 5),
    "connected": (NET + "[connected]\noutput=2000000000\n", 5),
    "input": ("[net]\nwidth=1000000\nheight=1000000\nchannels=3\n[convolutional]\nfilters=1\n", 1),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_memory_bombs_are_refused_before_allocating(name: str) -> None:
    text, line = BOMBS[name]
    tracemalloc.start()
    try:
        with pytest.raises(CfgError, match="limit") as info:
            graph_of(text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(info.value).startswith(f"bad.cfg:{line}:"), str(info.value)
    assert "DARKCFG_MAX_" in str(info.value)  # says how to raise the limit
    assert peak < 20 << 20, f"the graph pass allocated {peak} bytes"


def test_info_on_a_bomb_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from darkcfg.cli import main

    cfg = tmp_path / "bomb.cfg"
    cfg.write_text(BOMBS["upsample"][0])
    assert main(["info", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "bomb.cfg:9:" in err and "activations" in err and "Traceback" not in err


def test_limits_are_overridable(monkeypatch: pytest.MonkeyPatch) -> None:
    text = NET + "[convolutional]\nfilters=8\nsize=3\n"  # 12 KiB input + 32 KiB output; 224 floats (896 bytes) of weights
    graph_of(text)
    with pytest.raises(CfgError, match="activations.*over the 40.0 KiB limit"):
        graph_of(text, limits=Limits(activation_bytes=40 << 10))
    with pytest.raises(CfgError, match="parameters"):
        graph_of(text, limits=Limits(param_bytes=800))
    monkeypatch.setenv("DARKCFG_MAX_ACTIVATION_BYTES", "40K")
    with pytest.raises(CfgError, match="DARKCFG_MAX_ACTIVATION_BYTES"):
        graph_of(text)
    monkeypatch.setenv("DARKCFG_MAX_ACTIVATION_BYTES", "1T")
    graph_of(BOMBS["upsample"][0].replace("[upsample]\nstride=16\n" * 6, "[upsample]\nstride=16\n" * 3))
    monkeypatch.setenv("DARKCFG_MAX_ACTIVATION_BYTES", "lots")
    with pytest.raises(CfgError, match="not a size"):
        graph_of(text)


# ----------------------------------------------------------------------- tracebacks -> CfgError
REFUSED = {
    "filters-1M-digits": (NET + "[convolutional]\nfilters=" + "9" * 1_000_000 + "\n", 6, "32-bit"),
    "filters-26-digits": (NET + "[convolutional]\nfilters=" + "9" * 26 + "\n", 6, "32-bit"),
    "crnn-dilation-0": (NET + "[crnn]\noutput=4\nhidden=4\nsize=3\npad=1\ndilation=0\n", 10, "dilation"),
    "detection-classes": (NET + "[connected]\noutput=4\n[detection]\ncoords=4\nnum=1\nside=2\nclasses=-4\n", 11,
                          "classes"),
    "detection-coords": (NET + "[connected]\noutput=4\n[detection]\nclasses=1\nnum=1\nside=2\ncoords=-1\n", 11,
                         "coords"),
    "region-coords": (NET + "[convolutional]\nfilters=4\nsize=1\n[region]\nclasses=2\nnum=1\ncoords=1\n", 11,
                      "coords"),
    "yolo-mask": (NET + "[convolutional]\nfilters=18\nsize=1\n[yolo]\nclasses=1\nnum=3\nanchors=1,2,3,4,5,6\n"
                  "mask=5,6,7\n", 12, "mask index 5"),
    "softmax-temperature": (NET + "[connected]\noutput=4\n[softmax]\ntemperature=0\n", 8, "temperature"),
    "scale_x_y-overflow": (NET + "[convolutional]\nfilters=18\nsize=1\n[yolo]\nclasses=1\nnum=3\n"
                           "scale_x_y=1e309\n", 11, "overflows"),
    "groups-0": (NET + "[convolutional]\nfilters=4\nsize=1\ngroups=0\n", 8, "groups"),
    "groups-negative": (NET + "[convolutional]\nfilters=3\nsize=1\ngroups=-3\n", 8, "groups"),
    "crnn-groups-0": (NET + "[crnn]\noutput=4\nhidden=4\ngroups=0\n", 8, "groups"),
    "crnn-shrinking": (NET + "[crnn]\noutput=4\nhidden=4\nsize=3\n", 8, "keep the 32x32 size"),
    "maxpool-huge-window": (NET + "[maxpool]\nsize=2147483647\n", 5, "padded input"),
    "conv-kernel-over-input": ("[net]\nwidth=1\nheight=1\nchannels=1\n[convolutional]\nsize=3\nstride=3\n", 5,
                               "too small"),
    "local-pad-mismatch": (NET + "[local]\nfilters=2\nsize=5\npad=1\n", 8, "im2col"),
    "vertical-tab": (NET + "[convolutional]\nfilters=8\vsize=3\n", 6, "expects an integer"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_bad_values_are_located_cfg_errors(name: str) -> None:
    text, line, pattern = REFUSED[name]
    with pytest.raises(CfgError, match=pattern) as info:
        darkcfg.Darknet(graph_of(text))
    msg = str(info.value)
    assert msg.startswith(f"bad.cfg:{line}:"), msg
    assert len(msg) < 500  # a million-digit value is not echoed whole


@pytest.mark.parametrize("sep", ["\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"])
def test_lines_end_at_lf_only(sep: str) -> None:
    """Darknet's fgetl splits at LF only: a comment stays one comment, whatever it contains."""
    g = graph_of(NET + "[convolutional]\nfilters=8\n#note" + sep + "size=3\n")
    assert g.layers[0].attrs.size == 1 and g.layers[0].out_shape == (8, 32, 32)
    assert g.cfg.layers[0].options["filters"].line == 6
    # a line break Darknet does not see cannot start a section either
    g = graph_of(NET + "[convolutional]\nfilters=8\n#x" + sep + "[maxpool]\n")
    assert len(g.layers) == 1


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
def test_utf16_cfg_error_says_encoding(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "wide.cfg"
    path.write_bytes((NET + "[convolutional]\nfilters=8\n").encode(encoding))
    with pytest.raises(CfgError, match="encod") as info:
        read_cfg(path)
    assert str(path) in str(info.value)


def test_cfg_that_is_not_a_regular_file(tmp_path: Path) -> None:
    with pytest.raises(CfgError, match="directory"):
        read_cfg(tmp_path)


# --------------------------------------------------------------------------------- weights
SMALL = NET.replace("32", "8") + ("[convolutional]\nbatch_normalize=1\nfilters=4\nsize=3\npad=1\nactivation=leaky\n"
                                  "[convolutional]\nfilters=2\nsize=1\nactivation=linear\n")


@pytest.fixture()
def small(tmp_path: Path) -> tuple[Path, Path, bytes]:
    cfg = tmp_path / "small.cfg"
    cfg.write_text(SMALL)
    data = synthetic_weights(darkcfg.load(cfg).graph, seed=1)
    weights = tmp_path / "small.weights"
    weights.write_bytes(data)
    return cfg, weights, data


def _state(model: darkcfg.Darknet) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model: darkcfg.Darknet, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_negative_upto_is_refused(small) -> None:
    cfg, weights, _ = small
    model = darkcfg.load(cfg)
    before = _state(model)
    for upto in (-1, -50):
        with pytest.raises(WeightsError, match="upto"):
            model.load_weights(weights, upto=upto)
        with pytest.raises(WeightsError, match="upto"):
            model.save_weights(io.BytesIO(), upto=upto)
    assert _unchanged(model, before)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_fifo_is_refused_without_blocking(small, tmp_path: Path) -> None:
    cfg, _, _ = small
    fifo = tmp_path / "pipe.weights"
    os.mkfifo(fifo)
    model = darkcfg.load(cfg)
    errors: list[BaseException] = []

    def attempt() -> None:
        try:
            model.load_weights(fifo)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(20)
    if t.is_alive():  # unblock the reader so the test process can exit
        with open(fifo, "wb"):
            pass
        pytest.fail("loading from a FIFO blocked")
    assert len(errors) == 1 and isinstance(errors[0], WeightsError) and "FIFO" in str(errors[0])
    cfg_fifo = tmp_path / "pipe.cfg"
    os.mkfifo(cfg_fifo)
    with pytest.raises(CfgError, match="FIFO"):
        read_cfg(cfg_fifo)


def test_huge_sparse_file_is_not_read_whole(small, tmp_path: Path) -> None:
    cfg, _, data = small
    sparse = tmp_path / "sparse.weights"
    with open(sparse, "wb") as f:
        f.write(data)
        f.truncate(6 << 30)  # 6 GiB, almost all holes
    model = darkcfg.load(cfg)
    tracemalloc.start()
    try:
        with pytest.raises(WeightsError, match="left over"):
            model.load_weights(sparse)
        with pytest.warns(UserWarning, match="left over"):
            model.load_weights(sparse, strict=False)
        model.load_weights(sparse, upto=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 << 20, f"peak {peak} bytes for a {len(data)}-byte network"
    expected = darkcfg.load(cfg, io.BytesIO(data))
    assert all(torch.equal(v, expected.state_dict()[k]) for k, v in model.state_dict().items())


def _poison(data: bytes, cfg: Path, layer: int, role: str, value: float) -> bytearray:
    """``data`` with the first float of ``layer``'s ``role`` block set to ``value``."""
    graph = darkcfg.load(cfg).graph
    offset = 20
    for spec in graph.layers:
        for block in spec.blocks:
            if spec.index == layer and block.role == role:
                out = bytearray(data)
                out[offset:offset + 4] = np.float32(value).tobytes()
                return out
            offset += 4 * block.count
    raise AssertionError("no such block")


@pytest.mark.parametrize("role,value,what", [("weights", float("nan"), "NaN"), ("biases", float("inf"), "Inf"),
                                             ("rolling_variance", -1.0, "negative variance")])
def test_unusable_values_warn_or_raise_naming_the_block(small, role: str, value: float, what: str) -> None:
    cfg, _, data = small
    layer = 0 if role == "rolling_variance" else 1
    bad = _poison(data, cfg, layer, role, value)
    model = darkcfg.load(cfg)
    before = _state(model)
    with pytest.raises(WeightsError, match=f"layer {layer} .*'{role}'.*{what}"):
        model.load_weights(bad)
    assert _unchanged(model, before)
    with pytest.warns(UserWarning, match=f"layer {layer} .*'{role}'.*{what}"):
        model.load_weights(bad, strict=False)
    # Tiny negative denormals (published files hold -7e-44) are fine.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.load_weights(_poison(data, cfg, 0, "rolling_variance", -7e-44))


def test_bytes_are_a_path_never_content(small, tmp_path: Path) -> None:
    cfg, weights, data = small
    by_path = darkcfg.load(cfg, os.fsencode(weights))
    by_content = darkcfg.load(cfg, io.BytesIO(data))
    assert all(torch.equal(v, by_content.state_dict()[k]) for k, v in by_path.state_dict().items())
    with pytest.raises(WeightsError, match="BytesIO"):
        darkcfg.load(cfg, data)
    with pytest.raises(WeightsError, match="cannot read"):
        darkcfg.load(cfg, os.fsencode(tmp_path / "missing.weights"))


def test_bin_output_clearing_scans_the_graph_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building N xnor ``bin_output`` convs walked the whole graph N times (16k layers: 34 s)."""
    layers = "[convolutional]\nxnor=1\nbin_output=1\nfilters=4\nsize=1\n" * 40 + "[route]\nlayers=-2\n"
    graph = graph_of(NET + layers)

    class CountingList(list):
        walks = 0

        def __iter__(self):
            CountingList.walks += 1
            return super().__iter__()

    graph.layers = CountingList(graph.layers)
    model = darkcfg.Darknet(graph)
    assert CountingList.walks < 10  # a few whole-graph passes; one per bin_output conv before (40+)
    assert [m.xnor_linear for m in list(model.layers)[:40]] == [True] * 38 + [False, True]


# ------------------------------------------------------------------------------ file modes
@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_replaced_files_keep_their_mode_and_new_ones_follow_the_umask(small, tmp_path: Path) -> None:
    from darkcfg.export import export

    cfg, weights, _ = small
    model = darkcfg.load(cfg, weights)
    private = tmp_path / "private.weights"
    private.write_bytes(b"old")
    private.chmod(0o600)
    model.save_weights(private)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_bytes() == weights.read_bytes()

    old = os.umask(0o022)
    try:
        new_export = export(cfg, weights, "torchscript", tmp_path / "new.torchscript.pt")
        kept = tmp_path / "kept.torchscript.pt"
        kept.write_bytes(b"old")
        kept.chmod(0o640)
        export(cfg, weights, "torchscript", kept)
    finally:
        os.umask(old)
    assert stat.S_IMODE(new_export.stat().st_mode) == 0o644  # mkstemp made it 0600
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp" in p.name) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_every_results_writer_shares_the_atomic_write(tmp_path: Path) -> None:
    """run's labels/JSON, valid's results and the zoo's TOFU record all went through
    their own ``mkstemp`` (mode 0600, or a forced 0644 that widened private files)."""
    from darkcfg import evaluation, fileio, outputs, zoo

    writers = {
        "labels.txt": lambda p: outputs.write_atomic(p, b"0 0.5 0.5 0.1 0.1\n"),
        "coco_results.json": lambda p: evaluation._atomic_write(p, "[]"),
        zoo.TOFU_FILE: lambda p: zoo._write_tofu(p.parent, {"x": {"sha256": "0" * 64}}),
    }
    old = os.umask(0o027)
    try:
        for name, write in writers.items():
            folder = tmp_path / name.replace(".", "_")
            folder.mkdir()
            fresh = folder / name
            write(fresh)
            assert stat.S_IMODE(fresh.stat().st_mode) == 0o640, name  # 0666 minus the umask
            fresh.chmod(0o600)
            write(fresh)
            assert stat.S_IMODE(fresh.stat().st_mode) == 0o600, name  # a private file stays private
            assert [p.name for p in folder.iterdir()] == [name], name  # no temporary left behind
    finally:
        os.umask(old)

    seen: list[str] = []
    fileio.atomic_write(tmp_path / "model.pt2", lambda tmp: (seen.append(tmp), Path(tmp).write_bytes(b"x")))
    assert seen[0].endswith(".pt2")  # torch.export warns about archive names that do not end in .pt2


def test_every_error_is_a_darkcfg_error() -> None:
    assert issubclass(CfgError, DarkcfgError) and issubclass(WeightsError, DarkcfgError)
