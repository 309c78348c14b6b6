"""hubconf.py: ``torch.hub.load(<checkout>, "yolov4", pretrained=True, source="local")`` through a
loopback-served zoo index (the real yolov4 is 258 MB; the entry named yolov4 here is a tiny net)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import darkcfg
from darkcfg.weights import synthetic_weights
from loopback import LoopbackServer, serve_bytes

REPO = Path(__file__).resolve().parents[1]


def test_torch_hub_load_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg_path = REPO / "cfgs" / "tiny-yolo-all.cfg"
    cfg = cfg_path.read_bytes()
    weights = synthetic_weights(darkcfg.load(cfg_path).graph, seed=5)
    server = LoopbackServer()
    server.routes["/yolov4.cfg"] = serve_bytes(cfg)
    server.routes["/yolov4.weights"] = serve_bytes(weights)
    entry = lambda name, data: {"url": f"{server.url}/{name}", "bytes": len(data),  # noqa: E731
                                "sha256": hashlib.sha256(data).hexdigest()}
    index = tmp_path / "zoo.json"
    index.write_text(json.dumps({"models": [{"name": "yolov4", "task": "detect", "files": {
        "cfg": entry("yolov4.cfg", cfg), "weights": entry("yolov4.weights", weights)}}]}))
    monkeypatch.setenv("DARKCFG_ZOO", str(index))
    monkeypatch.setenv("DARKCFG_HOME", str(tmp_path / "home"))
    try:
        model = torch.hub.load(str(REPO), "yolov4", pretrained=True, source="local")
        assert len(server.requests) == 2 and (tmp_path / "home" / "yolov4" / "yolov4.weights").is_file()
        reference = darkcfg.load(cfg_path)
        reference.load_weights(tmp_path / "home" / "yolov4" / "yolov4.weights")
        x = torch.rand(1, 3, 64, 64)
        with torch.no_grad():
            for a, b in zip(model(x), reference(x)):
                assert torch.equal(a, b)
        bare = torch.hub.load(str(REPO), "yolov4", pretrained=False, source="local")
        assert isinstance(bare, darkcfg.Darknet) and len(server.requests) == 2  # cached, nothing fetched
    finally:
        server.close()
