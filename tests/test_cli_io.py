"""`darkcfg run`/`convert` input and output safety (issue 11 §1, §3) and the run options of issue 9 §3.

Each test reproduces a failure of the issues: outputs replacing inputs or merging same-named
inputs, one bad image aborting the batch, tracebacks for bad paths and values, `run CFG ""`
scanning the current folder.
"""

from __future__ import annotations

import hashlib
import json
import sys
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


@pytest.fixture(scope="module")
def det(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The own detector cfg with well-scaled synthetic weights beside it (the lookup rule)."""
    folder = tmp_path_factory.mktemp("model")
    cfg = folder / "det.cfg"
    cfg.write_text(OWN_DETECTOR.read_text())
    (folder / "det.weights").write_bytes(synthetic_weights(darkcfg.load(cfg).graph, seed=1))
    return cfg


def _image(path: Path, seed: int = 0, shape: tuple[int, int] = (48, 80)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    assert cv2.imwrite(str(path), rng.integers(0, 255, (*shape, 3), dtype=np.uint8))
    return path


def _video(path: Path, frames: int = 2) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((48, 64, 3), 60 * i, dtype=np.uint8))
    writer.release()
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ never lose a user's file


def test_out_dot_never_overwrites_inputs(det: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    person, keep = _image(tmp_path / "person.jpg", 1), _image(tmp_path / "keep.png", 2)
    clip = _video(tmp_path / "clip.avi")
    unrelated = tmp_path / "keep.jpg"
    unrelated.write_bytes(b"my own file")
    before = {p: _digest(p) for p in (person, keep, clip, unrelated)}
    assert main(["run", str(det), "person.jpg", "keep.png", "clip.avi", "--out", "."]) == 0
    assert {p: _digest(p) for p in before} == before  # was: person.jpg, keep.jpg and clip.mp4 replaced
    assert {"person_1.jpg", "keep_1.png", "clip_1.avi"} <= {p.name for p in tmp_path.iterdir()}
    assert cv2.imread("person_1.jpg").shape == (48, 80, 3)
    err = capsys.readouterr().err
    assert "person.jpg -> person_1.jpg" in err.replace("./", "")


def test_same_names_give_separate_outputs(det: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = _image(tmp_path / "a" / "dog.jpg", 1), _image(tmp_path / "b" / "dog.jpg", 2)
    c = _image(tmp_path / "c" / "dog.png", 3)
    out = tmp_path / "o"
    assert main(["run", str(det), str(a), str(b), str(c), "--out", str(out), "--save-txt"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["dog.jpg", "dog.txt", "dog_1.jpg", "dog_1.txt", "dog_2.png", "dog_2.txt"]  # was: one dog.jpg
    assert "dog_1.jpg" in capsys.readouterr().err


def test_existing_outputs_need_overwrite(det: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = _image(tmp_path / "in" / "x.jpg")
    out = tmp_path / "o"
    out.mkdir()
    (out / "x.jpg").write_bytes(b"earlier")
    assert main(["run", str(det), str(img), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "x.jpg already exists" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (out / "x.jpg").read_bytes() == b"earlier"
    assert main(["run", str(det), str(img), "--out", str(out), "--overwrite"]) == 0
    assert cv2.imread(str(out / "x.jpg")) is not None
    assert [p.name for p in out.iterdir()] == ["x.jpg"]  # no temporary file left behind


def test_out_file_and_save_json_checks(det: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = _image(tmp_path / "x.jpg")
    afile = tmp_path / "afile"
    afile.write_text("keep")
    assert main(["run", str(det), str(img), "--out", str(afile)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["run", str(det), str(img), "--save-json", str(img)]) == 2
    assert "is one of the input files" in capsys.readouterr().err
    assert _digest(img) == _digest(_image(tmp_path / "again.jpg"))
    assert main(["run", str(det), str(img), "--save-json", str(tmp_path / "nope" / "r.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert afile.read_text() == "keep"


# ------------------------------------------------------------------ bad images never abort the batch


def _png_bomb(path: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_image_limits import png_bomb

    return png_bomb(path)


def test_bad_images_are_skipped_and_named(det: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _image(tmp_path / "good.jpg")
    bomb = _png_bomb(tmp_path / "bomb.png")
    thin = _image(tmp_path / "thin.png", shape=(4000, 1))
    code = main(["run", str(det), str(good), str(bomb), str(thin), "--letterbox", "--batch", "2", "--json"])
    captured = capsys.readouterr()
    assert code == 1  # was: a raw cv2.error traceback, then 'invalid output size 0x320'
    assert [Path(json.loads(line)["image"]).name for line in captured.out.splitlines()] == ["good.jpg", "thin.png"]
    assert "bomb.png" in captured.err and "pixels" in captured.err and "1 of 3 inputs failed" in captured.err


def test_detect_reports_failures_without_losing_results(det: Path, tmp_path: Path) -> None:
    model = darkcfg.load(det, det.with_suffix(".weights"))
    good = [_image(tmp_path / f"g{i}.jpg", i) for i in range(3)]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    items = [good[0], bad, good[1], _png_bomb(tmp_path / "bomb.png"), good[2]]
    with pytest.raises(darkcfg.ImageBatchError) as info:
        model.detect(items, thresh=0.275, batch_size=2)
    exc = info.value
    assert isinstance(exc, darkcfg.ImageError) and "bad.jpg" in str(exc) and "bomb.png" in str(exc)
    assert sorted(exc.errors) == [1, 3]
    assert [r is None for r in exc.results] == [False, True, False, True, False]
    alone = [model.detect(p, thresh=0.275)[0] for p in good]
    for got, ref in zip([exc.results[i] for i in (0, 2, 4)], alone):  # batched vs alone: float rounding only
        assert [d.class_id for d in got] == [d.class_id for d in ref]
        assert np.allclose([d.prob for d in got], [d.prob for d in ref], atol=1e-5)
    assert sum(len(r) for r in alone) > 0
    assert model.detect(items, thresh=0.275, batch_size=2, on_error="none") == exc.results


def test_detect_streams_batch_by_batch(det: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from darkcfg.detect_api import Detector

    model = darkcfg.load(det, det.with_suffix(".weights"))
    paths = [_image(tmp_path / f"{i}.png", i, (16, 16)) for i in range(6)]
    pulled: list[int] = []
    seen_at_infer: list[int] = []

    def lazy():  # type: ignore[no-untyped-def]
        for p in paths:
            pulled.append(1)
            yield p

    real = Detector.infer
    monkeypatch.setattr(Detector, "infer", lambda self, batch, *a, **k: (seen_at_infer.append(len(pulled)),
                                                                          real(self, batch, *a, **k))[1])
    assert len(model.detect(lazy(), batch_size=2)) == 6
    assert seen_at_infer == [2, 4, 6]  # was: every image decoded before the first batch ran


# ------------------------------------------------------------------ one-line errors, range checks


@pytest.mark.parametrize("argv,needle", [
    (["run", "CFG", "x.jpg", "--thresh", "nan"], "between 0 and 1"),
    (["run", "CFG", "x.jpg", "--nms", "nan"], "between 0 and 1"),
    (["run", "CFG", "x.jpg", "--thresh", "1.5"], "between 0 and 1"),
    (["run", "CFG", "x.jpg", "--batch", "0"], "at least 1"),
    (["run", "CFG", "x.jpg", "--max-det", "0"], "at least 1"),
    (["run", "CFG", "x.jpg", "--size", "0", "64"], "at least 1"),
    (["convert", "CFG", "--batch", "0"], "at least 1"),
])
def test_values_are_range_checked(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and needle in capsys.readouterr().err


def test_empty_input_does_not_scan_the_current_folder(det: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    _image(tmp_path / "here.jpg")
    assert main(["run", str(det), ""]) == 2
    captured = capsys.readouterr()
    assert "empty input" in captured.err and "here.jpg" not in captured.out


def test_convert_out_errors(det: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    cases = [(tmp_path / "missing" / "m.onnx", "does not exist"), (tmp_path, "is a folder"),
             (det.with_suffix(".weights"), "is one of the input files")]
    for out, needle in cases:
        assert main(["convert", str(det), "--to", "weights", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    # the default name of --to weights is the weights file being read
    assert main(["convert", str(det), "--to", "weights"]) == 2
    assert "is one of the input files" in capsys.readouterr().err
    monkeypatch.setattr("darkcfg.outputs.os.access", lambda *a: False)  # as root, chmod cannot make it read-only
    assert main(["convert", str(det), "--to", "weights", "--out", str(tmp_path / "w.weights")]) == 2
    assert "not writable" in capsys.readouterr().err


def test_unexpected_exceptions_are_one_line(det: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    def boom(*args: object) -> int:
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr("darkcfg.run_command.run", boom)
    monkeypatch.delenv("DARKCFG_TRACEBACK", raising=False)
    assert main(["run", str(det), "x.jpg"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "please report" in err and "RuntimeError: something broke" in err


def test_size_that_does_not_fit_names_sizes_that_do(det: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from darkcfg.cfg import read_cfg
    from darkcfg.graph import build_graph

    assert main(["info", str(det), "--size", "100", "100"]) == 2
    err = capsys.readouterr().err
    assert "sizes that work: " in err
    listed = err.split("sizes that work: ")[1].split(" (")[0].split(", ")
    for item in listed:
        w, h = (int(v) for v in item.split(" x "))
        build_graph(read_cfg(det), size=(w, h))  # each suggestion really builds


# ------------------------------------------------------------------ cameras, streams, options


def test_camera_and_stream_that_cannot_open(det: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(det), "97", "rtsp://127.0.0.1:9/none"]) == 1
    err = capsys.readouterr().err
    assert "camera 97: cannot open camera" in err and "rtsp://127.0.0.1:9/none: cannot open stream" in err


def test_threads_option(det: Path, tmp_path: Path) -> None:
    before = torch.get_num_threads()
    try:
        assert main(["run", str(det), str(_image(tmp_path / "x.jpg")), "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1 and cv2.getNumThreads() == 1
    finally:
        torch.set_num_threads(before)


def _records(capsys: pytest.CaptureFixture[str]) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_classes_and_max_det(det: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    imgs = [str(_image(tmp_path / f"{i}.jpg", i, (96, 96))) for i in range(2)]
    base = ["run", str(det), *imgs, "--json", "--thresh", "0.26"]  # synthetic weights: probs near 0.25
    assert main(base) == 0
    full = _records(capsys)
    assert all(len(r["detections"]) > 3 for r in full), "the fixture should give a few boxes per image"
    assert main(base + ["--max-det", "3"]) == 0
    for r, f in zip(_records(capsys), full):
        top = sorted(f["detections"], key=lambda d: -d["prob"])[:3]
        assert sorted(d["prob"] for d in r["detections"]) == sorted(d["prob"] for d in top)
    wanted = sorted({d["class_id"] for d in full[0]["detections"]})[:2]
    assert main(base + ["--classes", ",".join(map(str, wanted))]) == 0
    for r, f in zip(_records(capsys), full):
        assert r["detections"] == [d for d in f["detections"] if d["class_id"] in wanted]
    name = full[0]["detections"][0]["name"]
    assert main(base + ["--classes", name]) == 0
    assert {d["name"] for r in _records(capsys) for d in r["detections"]} == {name}
    assert main(base + ["--classes", "999"]) == 2
    assert "class 999 does not exist" in capsys.readouterr().err


def test_save_txt_and_save_json(det: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = _image(tmp_path / "COCO_val2014_000000000042.jpg", 4, (60, 90))
    out, results = tmp_path / "o", tmp_path / "results.json"
    assert main(["run", str(det), str(img), "--json", "--thresh", "0.28", "--out", str(out), "--save-txt",
                 "--save-conf", "--save-json", str(results)]) == 0
    dets = _records(capsys)[0]["detections"]
    rows = [line.split() for line in (out / "COCO_val2014_000000000042.txt").read_text().splitlines()]
    assert len(rows) == len(dets) > 0
    coco = json.loads(results.read_text())
    assert len(coco) == len(dets)
    for row, d, c in zip(rows, dets, coco):
        cls, xc, yc, w, h, conf = int(row[0]), *map(float, row[1:])
        assert cls == d["class_id"] and abs(conf - d["prob"]) < 1e-5
        assert all(0.0 <= v <= 1.0 for v in (xc, yc, w, h))
        x1, y1, x2, y2 = d["box"]  # pixels, right/bottom clamped at size-1 (Darknet's drawing rule)
        assert abs((xc - w / 2) * 90 - x1) < 1.01 and abs((yc - h / 2) * 60 - y1) < 1.01
        assert abs((xc + w / 2) * 90 - x2) < 1.01 and abs((yc + h / 2) * 60 - y2) < 1.01
        assert c["image_id"] == 42 and c["category_id"] == d["class_id"] and abs(c["score"] - d["prob"]) < 1e-5
        bx, by, bw, bh = c["bbox"]
        assert abs(bx - x1) < 1.01 and abs(by - y1) < 1.01 and abs(bx + bw - x2) < 1.01
    assert main(["run", str(det), str(img), "--thresh", "0.28", "--save-json", str(results), "--coco-ids",
                 "--overwrite", "--out", str(tmp_path / "o2")]) == 0
    from darkcfg.label_files import COCO_CATEGORY_IDS

    assert len(COCO_CATEGORY_IDS) == 80 and COCO_CATEGORY_IDS[-1] == 90
    assert [c["category_id"] for c in json.loads(results.read_text())] == \
        [COCO_CATEGORY_IDS[c["category_id"]] for c in coco]


def test_run_flushes_each_image(det: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    imgs = [str(_image(tmp_path / f"{i}.jpg", i)) for i in range(3)]

    class Recorder:
        def __init__(self) -> None:
            self.text, self.flushed_at = "", []

        def write(self, s: str) -> int:
            self.text += s
            return len(s)

        def flush(self) -> None:
            self.flushed_at.append(self.text.count("\n"))

        def isatty(self) -> bool:
            return False

    rec = Recorder()
    monkeypatch.setattr(sys, "stdout", rec)
    assert main(["run", str(det), *imgs, "--json"]) == 0
    assert [n for n in (1, 2, 3) if n in rec.flushed_at] == [1, 2, 3]


def test_video_frames_get_label_files_and_keep_the_container(det: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    clip = _video(tmp_path / "clip.avi", frames=2)
    out = tmp_path / "o"
    assert main(["run", str(det), str(clip), "--out", str(out), "--save-txt", "--thresh", "0.28"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["clip.avi", "clip_000000.txt", "clip_000001.txt"]
    printed = capsys.readouterr().out
    assert "clip.avi frame 1:" in printed
    # a second run refuses to replace the earlier video unless told to
    assert main(["run", str(det), str(clip), "--out", str(out), "--save-txt"]) == 2
    assert "--overwrite" in capsys.readouterr().err
