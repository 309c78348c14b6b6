"""The zoo: sha256-verified, atomic, cached downloads (served from a loopback HTTP server)."""

from __future__ import annotations

import hashlib
import re
import http.server
import json
import sys
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
    monkeypatch.setenv("DARKCFG_HOME", str(tmp_path / "home"))
    img = tmp_path / "i.png"
    cv2.imwrite(str(img), np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    assert main(["run", "tiny", str(img), "--json", "--thresh", "0.01"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert {d["name"] for d in record["detections"]} <= {"apple", "banana"}  # the fetched .names is used
    assert (tmp_path / "home" / "tiny" / "tiny.weights").is_file()  # the store is $DARKCFG_HOME
    assert main(["zoo", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["name"] == "tiny"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_real_models_match_the_shared_copies(shared: Path) -> None:
    """Every model of ../shared/darknet/real: URL pinned to the README's commit, size and sha256 of the copy."""
    real = shared / "darknet" / "real"
    models = {m.name: m for m in load_index(DEFAULT_INDEX)}
    rows = [line.split("|")[1:-1] for line in (real / "README.md").read_text().splitlines()
            if line.startswith("| ") and line.count("|") == 7 and not line.startswith("| name")]
    commits = dict(re.findall(r"^- (\S+): ([0-9a-f]{40})$", (real / "README.md").read_text(), re.M))
    assert len(rows) == len(commits) == 10
    for name, _kind, repo_at, path, size, sha in ([c.strip() for c in r] for r in rows):
        m = models[name]
        repo = repo_at.split(" @ ")[0]
        w, c = m.file("weights"), m.file("cfg")
        assert w is not None and c is not None
        assert w.url == f"https://raw.githubusercontent.com/{repo}/{commits[name]}/{path}"
        assert (w.bytes, w.sha256) == (int(size), sha) == ((real / f"{name}.weights").stat().st_size,
                                                            _sha256(real / f"{name}.weights"))
        assert c.url.startswith(f"https://raw.githubusercontent.com/{repo}/{commits[name]}/")
        assert (c.bytes, c.sha256) == ((real / f"{name}.cfg").stat().st_size, _sha256(real / f"{name}.cfg"))


def test_index_hashes_match_the_shared_upstream_copies(shared: Path) -> None:
    """cfg (and Yolo-Fastest weights/names) hashes equal the unmodified upstream copies in ../shared."""
    dk = shared / "darknet"
    checked = 0
    for model in load_index(DEFAULT_INDEX):
        for f in model.files:
            if "/Yolo-Fastest/" in f.url and "/ModelZoo/" in f.url:
                local = dk / "yolo-fastest" / f.url.split("/ModelZoo/", 1)[1]
            elif f.role == "cfg" and f.url.startswith(f"https://raw.githubusercontent.com/AlexeyAB/darknet/{AB_HEAD}/cfg/"):
                local = dk / "cfg" / f.filename
            elif f.role == "names" and f.url.startswith(f"https://raw.githubusercontent.com/AlexeyAB/darknet/{AB_HEAD}/data/"):
                local = dk / "data" / f.url.rsplit("/", 1)[1]
            elif f.role == "cfg" and "/CrossStagePartialNetworks/" in f.url:
                local = dk / "csp-cfg" / f.filename
            else:
                continue
            assert (local.stat().st_size, _sha256(local)) == (f.bytes, f.sha256), f.url
            checked += 1
    assert checked >= 30


AB_HEAD = "59596d7880f6504768df41d6daa586f5cb2b932f"
PUBLISHED = {  # issue 9 §2: the hashes upstream published
    "yolov4": ("sha256", "e8a4f6c62188738d86dc6898d82724ec0964d0eb9d2ae0f0a9d53d65d108d562", 257717640),
    "yolov4-tiny": ("sha256", "cf9fbfd0f6d4869b35762f56100f50ed05268084078805f0e7989efe5bb8ca87", 24251276),
    "yolov4-tiny-2020-06": ("sha256", "037676f0d929c24e1bd9a0037fe30dc416fc26e0ca2a4491a44d024873316061", None),
    "yolov3": ("sha256", "523e4e69e1d015393a1b0a441cef1d9c7659e3eb2d7e15f793f060a21b32f297", None),
    "yolov3-tiny": ("sha256", "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c", None),
    "yolov2-tiny": ("sha256", "16f4e870f1aed83f0089cb69bfda6b53cb7b2a4a01721be56eaf5c899dfac45f", None),
    "yolov4x-mish": ("sha1", "a6f2879af2241de2e9730d317a55db6afd0af00b", None),
}


def test_published_models_and_sizes() -> None:
    """The hashes upstream published; the unverified (Google Drive, release without hash) entries."""
    models = {m.name: m for m in load_index(DEFAULT_INDEX)}
    for name, (algo, digest, size) in PUBLISHED.items():
        w = models[name].file("weights")
        assert w is not None and w.hashes[algo] == digest and w.verified
        assert size is None or w.bytes == size
    unverified = {m.name for m in models.values() if not m.verified}
    assert {"csresnext50-panet-spp", "csdarknet53-panet-spp", "csdarknet53", "csresnext50", "csresnet50",
            "yolov4-csp", "yolov4.conv.137", "yolov4-tiny.conv.29", "darknet53.conv.74"} <= unverified
    assert all("drive.google.com" not in f.url for m in models.values() if m.verified for f in m.files)
    assert len(models) >= 35


def test_imagenet_classifiers_come_with_darknets_class_names() -> None:
    """Every ImageNet-1k classifier fetches Darknet's imagenet.shortnames.list (hash-verified) as
    ``<cfg stem>.names``, the name the run's names lookup takes for a longer file."""
    models = [m for m in load_index(DEFAULT_INDEX) if m.task == "classify" and m.dataset.startswith("ImageNet (1000")]
    assert len(models) >= 10
    for m in models:
        names, cfg = m.file("names"), m.file("cfg")
        assert names is not None and cfg is not None, m.name
        assert names.url == f"https://raw.githubusercontent.com/AlexeyAB/darknet/{AB_HEAD}/data/imagenet.shortnames.list"
        assert names.verified and names.filename == Path(cfg.filename).stem + ".names", m.name


def test_weights_sizes_follow_from_the_cfgs(shared: Path) -> None:
    """Every weights size equals what its cfg implies: header + 4 bytes per float (of the first N
    layers for the partial backbones ``*.conv.N``)."""
    from darkcfg.cfg import read_cfg
    from darkcfg.graph import build_graph

    dk = shared / "darknet"
    checked = 0
    for m in load_index(DEFAULT_INDEX):
        c, w = m.file("cfg"), m.file("weights")
        assert c is not None and w is not None
        local = next((p for p in (dk / "cfg" / c.filename, dk / "csp-cfg" / c.filename, dk / "real" / c.filename)
                      if p.is_file() and _sha256(p) == c.sha256), None)
        if local is None:
            continue
        graph = build_graph(read_cfg(local))
        upto = m.upto or len(graph.layers)
        floats = sum(s.weight_floats for s in graph.layers[:upto])
        assert w.bytes in (20 + 4 * floats, 16 + 4 * floats), m.name  # 16: pre-2017 header (tiny-darknet)
        checked += 1
    assert checked >= 30


def test_unverified_model_trust_on_first_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A Drive-hosted model without a hash: refused without trust; with it, fetched through the
    confirmation page, its sha256 printed and recorded, and checked on every later use."""
    from loopback import LoopbackServer, send, serve_bytes

    cfg = (REPO / "cfgs" / "tiny-yolo-all.cfg").read_bytes()
    weights = synthetic_weights(darkcfg.load(REPO / "cfgs" / "tiny-yolo-all.cfg").graph, seed=3)
    server = LoopbackServer()
    page = (f'<html><form id="download-form" action="{server.url}/download" method="get">'
            '<input type="hidden" name="id" value="W1"><input type="hidden" name="confirm" value="t">'
            "</form></html>").encode()
    served = {"weights": weights}
    server.routes["/uc"] = serve_bytes(page, "text/html")
    server.routes["/download"] = lambda h: send(h, served["weights"])
    server.routes["/tiny.cfg"] = serve_bytes(cfg)
    index = tmp_path / "zoo.json"
    index.write_text(json.dumps({"models": [{"name": "drive-tiny", "task": "detect", "files": {
        "cfg": {"url": f"{server.url}/tiny.cfg", "bytes": len(cfg), "sha256": hashlib.sha256(cfg).hexdigest()},
        "weights": {"url": f"{server.url}/uc?export=download&id=W1", "bytes": len(weights),
                    "file": "drive-tiny.weights"}}}]}))
    store = tmp_path / "store"
    try:
        with pytest.raises(darkcfg.DarkcfgError, match="without a hash.*--trust"):
            fetch("drive-tiny", store=store, index=index, progress=False)  # not a TTY: never trusted silently
        assert not (store / "drive-tiny" / "drive-tiny.weights").exists()
        paths = fetch("drive-tiny", store=store, index=index, progress=False, trust=True)
        sha = hashlib.sha256(weights).hexdigest()
        assert paths["weights"].read_bytes() == weights and sha in capsys.readouterr().err
        record = json.loads((store / "drive-tiny" / "tofu.json").read_text())
        assert record["drive-tiny.weights"]["sha256"] == sha
        n = len(server.requests)
        fetch("drive-tiny", store=store, index=index, progress=False)  # pinned now: no trust needed, no download
        assert len(server.requests) == n
        paths["weights"].write_bytes(weights[:-4] + b"\x00\x00\x80\x7f")  # local damage: re-fetched, re-checked
        fetch("drive-tiny", store=store, index=index, progress=False)
        assert paths["weights"].read_bytes() == weights
        served["weights"] = weights[:-4] + b"\x01\x02\x03\x04"  # upstream changed since first use
        paths["weights"].unlink()
        with pytest.raises(darkcfg.DarkcfgError, match=f"does not match.*{sha}"):
            fetch("drive-tiny", store=store, index=index, progress=False, trust=True)
        assert not paths["weights"].exists() and json.loads((store / "drive-tiny" / "tofu.json").read_text()) == record
        model = darkcfg.load(paths["cfg"], None)
        assert model is not None
    finally:
        server.close()


def test_store_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from darkcfg.zoo import cache_home

    monkeypatch.setenv("DARKCFG_HOME", str(tmp_path / "h"))
    assert cache_home() == tmp_path / "h"
    monkeypatch.delenv("DARKCFG_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert cache_home() == tmp_path / "xdg" / "darkcfg"
    assert "site-packages" not in str(cache_home())


def test_stale_part_files_are_cleaned(served: tuple[_Server, Path], tmp_path: Path) -> None:
    """A part file left by a killed download (older than the deadline) goes; a fresh one (maybe
    another process's download in progress) stays."""
    import os
    import time

    _, index = served
    folder = tmp_path / "store" / "tiny"
    folder.mkdir(parents=True)
    old, fresh = folder / "tiny.weights.abc123.part", folder / "tiny.weights.def456.part"
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    fetch("tiny", store=tmp_path / "store", index=index, progress=False)
    assert not old.exists() and fresh.exists()
