"""The ``darkcfg`` command line: info, run, convert, bench (own cfgs; real weights when shared exists)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import darkcfg
from darkcfg.cli import main
from darkcfg.weights import synthetic_weights

REPO = Path(__file__).resolve().parents[1]
OWN_DETECTOR = REPO / "cfgs" / "tiny-yolo-all.cfg"
OWN_CLASSIFIER = REPO / "cfgs" / "tiny-classifier.cfg"


@pytest.fixture()
def detector_files(tmp_path: Path) -> tuple[Path, Path]:
    """The own detector cfg copied next to well-scaled weights with the same stem (the lookup rule).

    Not an uninitialised model: its zero BN variances blow activations up and every image
    gives hundreds of junk boxes, which hides ordering and threshold bugs.
    """
    cfg = tmp_path / "det.cfg"
    cfg.write_text(OWN_DETECTOR.read_text())
    (tmp_path / "det.weights").write_bytes(synthetic_weights(darkcfg.load(cfg).graph, seed=0))
    return cfg, tmp_path / "det.weights"


def _image(path: Path, seed: int = 0, shape: tuple[int, int] = (48, 80)) -> Path:
    rng = np.random.default_rng(seed)
    cv2.imwrite(str(path), rng.integers(0, 255, (*shape, 3), dtype=np.uint8))
    return path


def test_info_json_matches_graph(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(OWN_DETECTOR), "--json", "--size", "96", "64"]) == 0
    data = json.loads(capsys.readouterr().out)
    graph = darkcfg.load(OWN_DETECTOR, size=(96, 64)).graph
    assert (data["width"], data["height"]) == (96, 64)
    assert len(data["layers"]) == len(graph.layers)
    assert [tuple(layer["output"]) for layer in data["layers"]] == [s.out_shape for s in graph.layers]
    assert data["total"]["params"] == sum(layer["params"] for layer in data["layers"])
    assert data["total"]["weight_floats"] == graph.weight_floats
    assert set(data["layers"][0]) >= {"index", "type", "input", "output", "params", "bflops"}


def test_info_table_and_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["info", str(OWN_CLASSIFIER)]) == 0
    out = capsys.readouterr().out
    assert "Total BFLOPS" in out and "Parameters" in out
    bad = tmp_path / "bad.cfg"
    bad.write_text("[net]\nwidth=32\nheight=32\nchannels=3\n[convolutional]\nfilters=abc\n")
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.cfg:6" in err and "filters" in err


def test_run_json_skips_bad_inputs(detector_files: tuple[Path, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    cfg, _ = detector_files
    good1 = _image(tmp_path / "a.png", 1)
    good2 = _image(tmp_path / "b.jpg", 2, (70, 50))
    corrupt = tmp_path / "c.jpg"
    corrupt.write_bytes(b"\xff\xd8garbage")
    out_dir = tmp_path / "out"
    code = main(["run", str(cfg), str(good1), str(corrupt), str(good2), str(tmp_path / "missing.png"),
                 "--json", "--thresh", "0.01", "--out", str(out_dir), "--batch", "2"])
    captured = capsys.readouterr()
    assert code == 1
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert [Path(r["image"]).name for r in records] == ["a.png", "b.jpg"]
    assert (records[0]["width"], records[0]["height"]) == (80, 48)
    assert (records[1]["width"], records[1]["height"]) == (50, 70)
    for r in records:
        for d in r["detections"]:
            assert set(d) >= {"class_id", "name", "prob", "box"}
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= r["width"] and 0 <= y1 <= y2 <= r["height"]
    assert "c.jpg" in captured.err and "missing.png" in captured.err and "2 of 4 inputs failed" in captured.err
    assert sorted(p.name for p in out_dir.iterdir()) == ["a.png", "b.jpg"]  # the inputs' formats


def test_run_json_equals_api(detector_files: tuple[Path, Path], tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    cfg, weights = detector_files
    img = _image(tmp_path / "x.png", 3)
    assert main(["run", str(cfg), str(img), "--json", "--thresh", "0.01"]) == 0
    record = json.loads(capsys.readouterr().out)
    api = darkcfg.load(cfg, weights).fuse().detect(img, thresh=0.01)[0]
    assert [d["class_id"] for d in record["detections"]] == [d.class_id for d in api]
    assert np.allclose([d["prob"] for d in record["detections"]], [d.prob for d in api], atol=1e-5)


def test_run_bf16_is_the_precision_policy(detector_files: tuple[Path, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """``run --bf16`` = ``optimize(dtype=torch.bfloat16)``: the same detections as that model's
    ``detect``; ``--half --bf16`` together is refused."""
    import torch

    from darkcfg.precision import cpu_has_bf16

    cfg, weights = detector_files
    img = _image(tmp_path / "x.png", 3)
    assert main(["run", str(cfg), str(img), "--json", "--thresh", "0.01", "--bf16"]) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out)
    api = darkcfg.load(cfg, weights).optimize(dtype=torch.bfloat16).detect(img, thresh=0.01)[0]
    assert api and [d["class_id"] for d in record["detections"]] == [d.class_id for d in api]
    assert np.allclose([d["prob"] for d in record["detections"]], [d.prob for d in api], atol=1e-5)
    assert ("emulates bf16" in captured.err) == (cpu_has_bf16() is False)
    assert main(["run", str(cfg), str(img), "--bf16", "--half", "--device", "cuda"]) == 2
    assert "give one" in capsys.readouterr().err


def test_run_bf16_says_when_the_policy_keeps_float32(shared: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Yolo-Fastest (small depthwise convs on the float32 direct kernels) stays float32 under
    ``--bf16`` on the CPU, says so, and prints exactly what the float32 run prints."""
    from darkcfg import native

    if native.library() is None:
        pytest.skip("the native kernels cannot build here (no C compiler): the policy converts every net")
    folder = shared / "darknet" / "yolo-fastest" / "yolo-fastest-1.1_coco"
    argv = ["run", str(folder / "yolo-fastest-1.1.cfg"), str(shared / "darknet" / "data" / "dog.jpg")]
    assert main(argv) == 0
    fp32 = capsys.readouterr().out
    assert main(argv + ["--bf16"]) == 0
    captured = capsys.readouterr()
    assert captured.out == fp32 and "dog: 65%" in fp32
    assert "--bf16: kept float32: 84 of its 84 convs" in captured.err


def test_run_without_weights_says_where_it_looked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "lonely.cfg"
    cfg.write_text(OWN_DETECTOR.read_text())
    assert main(["run", str(cfg), str(_image(tmp_path / "i.png"))]) == 2
    err = capsys.readouterr().err
    assert "lonely.weights" in err and "looked" in err


def test_run_takes_weights_after_the_cfg_in_darknets_order(detector_files: tuple[Path, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """``run CFG WEIGHTS IMAGE`` (``darknet detector test``'s order) uses WEIGHTS, not the file
    beside the cfg: taken as an image it failed to decode while the other weights ran silently."""
    cfg, beside = detector_files
    other = tmp_path / "elsewhere" / "other.weights"
    other.parent.mkdir()
    other.write_bytes(synthetic_weights(darkcfg.load(cfg).graph, seed=7))
    img = _image(tmp_path / "x.png", 3)

    def probs(*args: str) -> list[float]:
        assert main(["run", str(cfg), *args, "--json", "--thresh", "0.01"]) == 0
        return [d["prob"] for d in json.loads(capsys.readouterr().out)["detections"]]

    api = darkcfg.load(cfg, other).fuse().detect(img, thresh=0.01)[0]
    named = probs(str(other), str(img))
    assert named == probs(str(img), "--weights", str(other))
    assert np.allclose(named, [d.prob for d in api], atol=1e-5)
    assert named != probs(str(img))  # (the weights beside the cfg give other detections: the test can fail)
    assert named == probs(str(other), str(img), "--weights", str(other))  # the same file twice is fine

    assert main(["run", str(cfg), str(other), str(img), "--weights", str(beside)]) == 2
    assert "two weights files" in capsys.readouterr().err
    assert main(["run", str(cfg), str(other)]) == 2
    assert "no INPUT after the weights file" in capsys.readouterr().err
    assert main(["run", str(cfg), str(img), str(other)]) == 2
    err = capsys.readouterr().err
    assert "other.weights: a weights file among the inputs" in err


def test_weights_after_the_cfg_for_convert_bench_and_map(detector_files: tuple[Path, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    cfg, beside = detector_files
    other = tmp_path / "other.weights"
    other.write_bytes(synthetic_weights(darkcfg.load(cfg).graph, seed=7))
    copy = tmp_path / "copy.weights"
    assert main(["convert", str(cfg), str(other), "--to", "weights", "--out", str(copy)]) == 0
    assert copy.read_bytes() == other.read_bytes() != beside.read_bytes()
    for argv in (["convert", str(cfg), str(other)], ["bench", str(cfg), str(other)],
                 ["map", str(tmp_path / "any.data"), str(cfg), str(other)]):
        assert main([*argv, "--weights", str(beside)]) == 2  # refused before any work
        assert "two weights files" in capsys.readouterr().err


def test_run_video(detector_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, _ = detector_files
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG/AVI")
    for i in range(3):
        writer.write(np.full((48, 64, 3), 40 * i, dtype=np.uint8))
    writer.release()
    assert main(["run", str(cfg), str(video), "--json", "--out", str(tmp_path / "o")]) == 0
    frames = [json.loads(line)["frame"] for line in capsys.readouterr().out.splitlines()]
    assert frames == [0, 1, 2]
    written = cv2.VideoCapture(str(tmp_path / "o" / "clip.avi"))  # the input's container kept
    assert int(written.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    written.release()
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["clip.avi"]  # no partial file left


def test_convert_torchscript_and_weights(detector_files: tuple[Path, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    cfg, weights = detector_files
    ts = tmp_path / "m.pt"
    assert main(["convert", str(cfg), "--to", "torchscript", "--out", str(ts)]) == 0
    scripted = torch.jit.load(str(ts))
    model = darkcfg.load(cfg, weights).fuse()  # the export is the fused model
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        got = scripted(x)
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        assert (a - b).abs().max() <= 1e-5 * max(1.0, float(b.abs().max()))
    copy = tmp_path / "copy.weights"
    assert main(["convert", str(cfg), "--to", "weights", "--out", str(copy)]) == 0
    assert copy.read_bytes() == weights.read_bytes()


def test_bench_runs(detector_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    cfg, _ = detector_files
    assert main(["bench", str(cfg), "--iters", "1", "--warmup", "0", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "darkcfg (fused BN)" in data["median_ms"] and data["median_ms"]["darkcfg (fused BN)"] > 0
    from darkcfg import native

    expected = "unavailable" if native.library() is None else (
        "on torch's OpenMP threads" if native.uses_openmp() else "pthreads")
    assert data["fast_paths"]["native kernels"].startswith(expected)
    assert data["fast_paths"]["Winograd 3x3"] == ("yes" if native.library() is not None else "no (needs the native kernels)")
    assert data["fast_paths"]["frame replays"] == "yes"
    assert "darkcfg optimize() bf16" not in data["median_ms"] and "logical CPUs" in data["cpu"]


def test_bench_bf16(detector_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    cfg, _ = detector_files
    assert main(["bench", str(cfg), "--iters", "1", "--warmup", "0", "--no-opencv", "--bf16", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["median_ms"]["darkcfg optimize() bf16"] > 0
    assert data["bf16_note"] is None  # (not a depthwise-heavy net: converted)


def test_run_real_weights_prints_like_darknet(shared: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = shared / "darknet" / "yolo-fastest" / "yolo-fastest-1.1_coco"
    assert main(["run", str(folder / "yolo-fastest-1.1.cfg"), str(shared / "darknet" / "data" / "dog.jpg")]) == 0
    out = capsys.readouterr().out
    assert "dog: 65%" in out and "car: 88%" in out and "bicycle: 55%" in out


def test_annotate_draws_box_and_label() -> None:
    from darkcfg.detect import Detection
    from darkcfg.draw import _color, annotate

    img = np.full((120, 160, 3), 128, dtype=np.uint8)
    det = Detection(3, "cat", 0.9, (40.0, 50.0, 100.0, 110.0), 0.95)
    out = annotate(img, [det])
    assert out.shape == img.shape and img[0, 0, 0] == 128  # a copy: the input is untouched
    assert tuple(int(v) for v in out[80, 40]) == _color(3)  # left edge of the box, BGR
    assert tuple(int(v) for v in out[80, 70]) == (128, 128, 128)  # inside stays clear
    tab = out[30:50, 42:90].reshape(-1, 3)
    assert (tab == np.array(_color(3), dtype=np.uint8)).all(axis=1).mean() > 0.3  # label tab above
