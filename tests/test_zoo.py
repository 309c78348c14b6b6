"""The zoo: sha256-verified, atomic, cached downloads (served from a loopback HTTP server)."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest

import darkcfg
from darkcfg.cli import main
from darkcfg.weights import synthetic_weights
from darkcfg.zoo import DEFAULT_INDEX, fetch, load_index

REPO = Path(__file__).resolve().parents[1]


class _Server:
    def __init__(self, root: Path):
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **k):  # noqa: ANN002, ANN003
                super().__init__(*a, directory=str(root), **k)

            def log_message(self, *args) -> None:  # noqa: ANN002
                server.requests.append(self.path)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[_Server, Path]]:
    """A tiny detector published on a loopback server, with its zoo index."""
    root = tmp_path / "remote"
    root.mkdir()
    cfg_text = (REPO / "cfgs" / "tiny-yolo-all.cfg").read_bytes()
    (root / "tiny.cfg").write_bytes(cfg_text)
    graph = darkcfg.load(REPO / "cfgs" / "tiny-yolo-all.cfg").graph
    (root / "tiny.weights").write_bytes(synthetic_weights(graph, seed=11))
    (root / "tiny.names").write_text("apple\nbanana\n")
    server = _Server(root)

    def entry(name: str) -> dict:
        data = (root / name).read_bytes()
        return {"url": f"{server.url}/{name}", "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}

    index = tmp_path / "zoo.json"
    index.write_text(json.dumps({"models": [{"name": "tiny", "task": "detect", "input": [64, 64],
                                             "files": {"cfg": entry("tiny.cfg"), "weights": entry("tiny.weights"),
                                                       "names": entry("tiny.names")}}]}))
    try:
        yield server, index
    finally:
        server.close()


def test_fetch_verifies_and_caches(served: tuple[_Server, Path], tmp_path: Path) -> None:
    server, index = served
    store = tmp_path / "store"
    paths = fetch("tiny", store=store, index=index, progress=False)
    assert paths["cfg"] == store / "tiny" / "tiny.cfg" and paths["weights"].read_bytes()[:4] == b"\x00\x00\x00\x00"
    assert sorted(p.name for p in (store / "tiny").iterdir()) == ["tiny.cfg", "tiny.names", "tiny.weights"]
    assert len(server.requests) == 3
    fetch("tiny", store=store, index=index, progress=False)
    assert len(server.requests) == 3  # verified cache: nothing downloaded again
    paths["weights"].write_bytes(b"tampered")
    fetch("tiny", store=store, index=index, progress=False)
    assert len(server.requests) == 4 and paths["weights"].stat().st_size > 100  # re-fetched, hash good


def test_hash_mismatch_keeps_nothing(served: tuple[_Server, Path], tmp_path: Path) -> None:
    _, index = served
    data = json.loads(index.read_text())
    data["models"][0]["files"]["weights"]["sha256"] = "0" * 64
    index.write_text(json.dumps(data))
    store = tmp_path / "store"
    with pytest.raises(darkcfg.DarkcfgError, match="sha256"):
        fetch("tiny", store=store, index=index, progress=False)
    assert not (store / "tiny" / "tiny.weights").exists()
    assert not list((store / "tiny").glob("*.part"))


def test_missing_file_and_unknown_model(served: tuple[_Server, Path], tmp_path: Path) -> None:
    server, index = served
    data = json.loads(index.read_text())
    data["models"][0]["files"]["cfg"]["url"] = f"{server.url}/nope.cfg"
    index.write_text(json.dumps(data))
    with pytest.raises(darkcfg.DarkcfgError, match="nope.cfg"):
        fetch("tiny", store=tmp_path / "s", index=index, progress=False)
    with pytest.raises(darkcfg.DarkcfgError, match="known: tiny"):
        fetch("other", store=tmp_path / "s", index=index, progress=False)
    bad = tmp_path / "bad.json"
    bad.write_text('{"models": [{"name": "x", "files": {}}]}')
    with pytest.raises(darkcfg.DarkcfgError, match="malformed"):
        load_index(bad)


def test_run_by_zoo_name(served: tuple[_Server, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:
    _, index = served
    monkeypatch.setenv("DARKCFG_ZOO", str(index))
    monkeypatch.setenv("DARKCFG_WEIGHTS", str(tmp_path / "store"))
    img = tmp_path / "i.png"
    cv2.imwrite(str(img), np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    assert main(["run", "tiny", str(img), "--json", "--thresh", "0.01"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert {d["name"] for d in record["detections"]} <= {"apple", "banana"}  # the fetched .names is used
    assert main(["zoo", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["name"] == "tiny"


def test_index_hashes_match_the_published_files(shared: Path) -> None:
    """cfgs/zoo.json's sizes and sha256 are those of the upstream files mirrored in ../shared."""
    checked = 0
    for model in load_index(DEFAULT_INDEX):
        for f in model.files:
            local = shared / "darknet" / "yolo-fastest" / f.url.split("/ModelZoo/", 1)[1]
            data = local.read_bytes()
            assert (len(data), hashlib.sha256(data).hexdigest()) == (f.bytes, f.sha256), f.url
            checked += 1
    assert checked >= 10
