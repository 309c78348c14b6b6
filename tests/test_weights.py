"""``.weights`` load/save: byte-identical round trips, header variants, layout transforms, errors.

The corpus round trip (every conformance case, synthetic weights regenerated in
memory) needs the shared fixtures and skips without them; everything else uses a
small cfg written to ``tmp_path`` and files built by hand with numpy, with the
block layout spelled out here independently of :mod:`darkcfg.weights`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import darkcfg
from darkcfg import WeightsError, conformance
from darkcfg.shared import conformance_cases

# --------------------------------------------------------------------------- corpus round trip

CASES = conformance_cases()
CASES_DIR = CASES[0].parent if CASES else None


class HashWriter(io.RawIOBase):
    """A write-only stream that keeps only the sha256 and the length of what it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.sha = hashlib.sha256()
        self.nbytes = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        self.sha.update(b)
        n = memoryview(b).nbytes
        self.nbytes += n
        return n


# Without the fixtures the test still exists once and skips through the `shared` fixture.
@pytest.mark.parametrize("case_dir", CASES or [None], ids=[c.name for c in CASES] or ["no-shared"])
def test_corpus_load_save_byte_identical(case_dir: Path, shared: Path, make_weights) -> None:
    meta = json.loads((case_dir / "meta.json").read_text())
    w = meta["weights"]
    if "file" in w:
        blob = (shared / w["file"]).read_bytes()
    else:
        blob = conformance.case_weights(make_weights, case_dir, meta)
    digest, nbytes = hashlib.sha256(blob).hexdigest(), len(blob)
    if "sha256" in w:
        assert digest == w["sha256"], "regenerated synthetic weights differ from meta.json's sha256"
    model = darkcfg.load(shared / meta["cfg"], memoryview(blob), size=(meta["width"], meta["height"]))
    del blob
    out = HashWriter()
    model.save_weights(out)
    assert out.nbytes == nbytes
    assert out.sha.hexdigest() == digest, f"{case_dir.name}: load -> save is not byte-identical"


def test_corpus_covers_header_variants(shared: Path) -> None:
    versions = {(m["major"], m["minor"], m["revision"]) for m in
                (json.loads((c / "meta.json").read_text())["weights"] for c in CASES) if "major" in m}
    assert {(0, 2, 5), (0, 1, 0), (0, 1, 5), (0, 0, 0), (1, 0, 0)} <= versions


# --------------------------------------------------------------------------- a small own network

CFG = """\
[net]
width=8
height=8
channels=3

# 0: conv + BN, 3x8x8 -> 4x8x8
[convolutional]
batch_normalize=1
filters=4
size=3
stride=1
pad=1
activation=leaky
{conv0_extra}

# 1: conv with bias, 1x1, 4x8x8 -> 2x8x8
[convolutional]
filters=2
size=1
stride=1
pad=1
activation=linear
{conv1_extra}

# 2: 2x8x8 -> 2x4x4
[maxpool]
size=2
stride=2

# 3: 32 -> 5, with BN (trio AFTER the weights for [connected])
[connected]
output=5
batch_normalize=1
activation=linear
{fc_extra}

[softmax]
"""

# (layer, role, count) in load_weights_upto order, written out by hand.
CONV0 = [(0, "biases", 4), (0, "scales", 4), (0, "rolling_mean", 4), (0, "rolling_variance", 4), (0, "weights", 108)]
CONV1 = [(1, "biases", 2), (1, "weights", 8)]
FC = [(3, "biases", 5), (3, "weights", 160), (3, "scales", 5), (3, "rolling_mean", 5), (3, "rolling_variance", 5)]
LAYOUT = CONV0 + CONV1 + FC
TOTAL = sum(n for _, _, n in LAYOUT)  # 314


def write_cfg(tmp_path: Path, name: str = "small.cfg", **extra: str) -> Path:
    text = CFG.format(conv0_extra=extra.get("conv0", ""), conv1_extra=extra.get("conv1", ""),
                      fc_extra=extra.get("fc", ""))
    path = tmp_path / name
    path.write_text(text)
    return path


def header(major: int = 0, minor: int = 2, revision: int = 5, seen: int = 12345) -> bytes:
    head = struct.pack("<iii", major, minor, revision)
    return head + (struct.pack("<Q", seen) if major * 10 + minor >= 2 else struct.pack("<I", seen))


def random_body(layout=LAYOUT, seed: int = 0) -> np.ndarray:
    """Plausible values per role (variances positive), float32."""
    rng = np.random.default_rng(seed)
    parts = []
    for _, role, n in layout:
        lo, hi = (0.5, 1.5) if role in ("scales", "rolling_variance") else (-0.5, 0.5)
        parts.append(rng.uniform(lo, hi, n).astype("<f4"))
    return np.concatenate(parts)


def split(body: np.ndarray, layout=LAYOUT) -> dict[tuple[int, str], np.ndarray]:
    out, off = {}, 0
    for layer, role, n in layout:
        out[(layer, role)] = body[off:off + n]
        off += n
    assert off == body.size
    return out


def write_weights(path: Path, body: np.ndarray, head: bytes | None = None) -> Path:
    path.write_bytes((header() if head is None else head) + body.astype("<f4").tobytes())
    return path


def tensors_of(model: darkcfg.Darknet) -> dict[tuple[int, str], torch.Tensor]:
    """The model's tensors for each (layer, role) of LAYOUT, as flat numpy-comparable tensors."""
    c0, c1, fc = model.layers[0], model.layers[1], model.layers[3]
    return {
        (0, "biases"): c0.bn.bias, (0, "scales"): c0.bn.weight, (0, "rolling_mean"): c0.bn.running_mean,
        (0, "rolling_variance"): c0.bn.running_var, (0, "weights"): c0.conv.weight,
        (1, "biases"): c1.conv.bias, (1, "weights"): c1.conv.weight,
        (3, "biases"): fc.linear.bias, (3, "weights"): fc.linear.weight, (3, "scales"): fc.bn.weight,
        (3, "rolling_mean"): fc.bn.running_mean, (3, "rolling_variance"): fc.bn.running_var,
    }


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), f"{k} changed by a failed load"


def assert_loaded(model: darkcfg.Darknet, body: np.ndarray, layout=LAYOUT, skip=()) -> None:
    tensors = tensors_of(model)
    for key, values in split(body, layout).items():
        if key in skip:
            continue
        t = tensors[key].detach().numpy()
        # Darknet's layouts: conv weights [n][c/groups][k][k], connected [outputs][inputs], row-major
        np.testing.assert_array_equal(t, values.reshape(t.shape), err_msg=str(key))


@pytest.fixture
def small(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    cfg = write_cfg(tmp_path)
    body = random_body()
    return cfg, write_weights(tmp_path / "small.weights", body), body


# --------------------------------------------------------------------------- (k) values == file bytes

def test_layout_is_what_the_spec_says(tmp_path: Path) -> None:
    model = darkcfg.load(write_cfg(tmp_path))
    assert model.graph.weight_floats == TOTAL
    assert [(s.index, b.role, b.count) for s in model.graph.layers for b in s.blocks] == LAYOUT


def test_loaded_values_equal_file_bytes(small) -> None:
    cfg, weights, body = small
    model = darkcfg.load(cfg, weights)
    # independent read of the file: header 20 bytes, then float32 little endian
    raw = np.frombuffer(weights.read_bytes(), dtype="<f4", offset=20)
    np.testing.assert_array_equal(raw, body)
    conv_w = raw[16:16 + 108].reshape(4, 3, 3, 3)
    assert torch.equal(model.layers[0].conv.weight, torch.from_numpy(conv_w.copy()))
    assert torch.equal(model.layers[0].bn.running_var, torch.from_numpy(raw[12:16].copy()))
    fc_w = raw[124 + 10 + 5:124 + 10 + 5 + 160].reshape(5, 32)
    assert torch.equal(model.layers[3].linear.weight, torch.from_numpy(fc_w.copy()))
    assert_loaded(model, body)
    assert model.header == weights.read_bytes()[:20]


def test_load_from_bytes_and_path_agree(small) -> None:
    cfg, weights, body = small
    a = darkcfg.load(cfg, weights)
    b = darkcfg.load(cfg, memoryview(weights.read_bytes()))
    c = darkcfg.load(cfg, str(weights))
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]) and torch.equal(v, c.state_dict()[k]), k


def test_save_round_trip_path_and_stream(small, tmp_path: Path) -> None:
    cfg, weights, _ = small
    model = darkcfg.load(cfg, weights)
    out = tmp_path / "out.weights"
    model.save_weights(out)
    assert out.read_bytes() == weights.read_bytes()
    buf = io.BytesIO()
    model.save_weights(buf)
    assert buf.getvalue() == weights.read_bytes()


def test_save_without_loading_writes_default_header(tmp_path: Path) -> None:
    model = darkcfg.load(write_cfg(tmp_path))
    buf = io.BytesIO()
    model.save_weights(buf)
    data = buf.getvalue()
    assert data[:20] == struct.pack("<iiiQ", 0, 2, 5, 0)
    assert len(data) == 20 + 4 * TOTAL
    again = darkcfg.load(write_cfg(tmp_path), io.BytesIO(data))
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


# --------------------------------------------------------------------------- (b) header variants

@pytest.mark.parametrize("major,minor,revision,size", [
    (0, 0, 0, 16), (0, 1, 0, 16), (0, 1, 5, 16),       # major*10+minor < 2: uint32 seen
    (0, 2, 5, 20), (1, 0, 0, 20), (0, 5, 0, 20), (2, 0, 1, 20),
])
def test_header_variants(tmp_path: Path, major: int, minor: int, revision: int, size: int) -> None:
    cfg = write_cfg(tmp_path)
    body = random_body(seed=major * 100 + minor)
    head = header(major, minor, revision, seen=2**31 + 7 if size == 20 else 4000)
    assert len(head) == size
    weights = write_weights(tmp_path / "v.weights", body, head)
    model = darkcfg.load(cfg, weights)
    assert_loaded(model, body)
    assert model.header == head
    buf = io.BytesIO()
    model.save_weights(buf)
    assert buf.getvalue() == weights.read_bytes()


@pytest.mark.parametrize("major,minor", [(1001, 0), (0, 1001), (1001, 1001)])
def test_transposed_connected(tmp_path: Path, major: int, minor: int) -> None:
    """major>1000 or minor>1000: Darknet's file holds the [connected] matrix as [inputs][outputs]."""
    cfg = write_cfg(tmp_path)
    body = random_body(seed=3)
    w = split(body)[(3, "weights")].reshape(5, 32).copy()  # the matrix the model must end up with
    file_body = body.copy()
    start = 124 + 10 + 5
    file_body[start:start + 160] = np.ascontiguousarray(w.T).reshape(-1)
    head = header(major, minor, 0)
    weights = write_weights(tmp_path / "t.weights", file_body, head)
    model = darkcfg.load(cfg, weights)
    assert torch.equal(model.layers[3].linear.weight, torch.from_numpy(w))
    assert_loaded(model, body)  # everything else as in the untransposed layout
    # convs are never transposed by the flag
    assert torch.equal(model.layers[0].conv.weight, torch.from_numpy(split(body)[(0, "weights")].reshape(4, 3, 3, 3)))
    buf = io.BytesIO()
    model.save_weights(buf)
    assert buf.getvalue() == weights.read_bytes()  # saved transposed again, under the same header


def test_flipped_conv(tmp_path: Path) -> None:
    """``flipped=1``: the file holds the conv's weights as a [c*k*k][n] matrix."""
    cfg = write_cfg(tmp_path, conv0="flipped=1")
    body = random_body(seed=4)
    w = split(body)[(0, "weights")].reshape(4, 3, 3, 3).copy()
    file_body = body.copy()
    file_body[16:16 + 108] = np.ascontiguousarray(w.reshape(4, 27).T).reshape(-1)
    weights = write_weights(tmp_path / "f.weights", file_body)
    model = darkcfg.load(cfg, weights)
    assert torch.equal(model.layers[0].conv.weight, torch.from_numpy(w))
    assert_loaded(model, body)
    buf = io.BytesIO()
    model.save_weights(buf)
    assert buf.getvalue() == weights.read_bytes()


# --------------------------------------------------------------------------- (c) (d) (h) errors

@pytest.mark.parametrize("cut,layer,kind,block_missing,total_missing", [
    (TOTAL - 3, 3, "connected", 3, 3),          # inside the last block
    (TOTAL - 7, 3, "connected", 2, 7),          # rolling_mean of [connected] short, variance absent
    (100, 0, "convolutional", 16 + 108 - 100, TOTAL - 100),  # inside conv 0's weights
    (124 + 1, 1, "convolutional", 1, TOTAL - 125),           # inside conv 1's biases
])
def test_truncated_file_names_layer(small, tmp_path: Path, cut: int, layer: int, kind: str,
                                    block_missing: int, total_missing: int) -> None:
    cfg, _, body = small
    short = write_weights(tmp_path / "short.weights", body[:cut])
    with pytest.raises(WeightsError) as info:
        darkcfg.load(cfg, short)
    msg = str(info.value)
    assert str(short) in msg
    assert f"layer {layer} [{kind}]" in msg
    assert f"{block_missing} floats missing" in msg
    assert f"{total_missing} floats short" in msg, msg


def test_extended_file_strict_and_lenient(small, tmp_path: Path) -> None:
    cfg, _, body = small
    extra = np.concatenate([body, np.float32([1.0, 2.0, 3.0])])
    long = write_weights(tmp_path / "long.weights", extra)
    with pytest.raises(WeightsError, match=r"3 floats are left over"):
        darkcfg.load(cfg, long)
    with pytest.raises(WeightsError, match="strict=False"):
        darkcfg.load(cfg, long, strict=True)
    with pytest.warns(UserWarning, match=r"3 floats are left over"):
        model = darkcfg.load(cfg, long, strict=False)
    assert_loaded(model, body)
    with pytest.warns(UserWarning):
        model.load_weights(long, strict=False)


def test_body_not_multiple_of_four(small, tmp_path: Path) -> None:
    cfg, weights, _ = small
    odd = tmp_path / "odd.weights"
    odd.write_bytes(weights.read_bytes() + b"\0\0")
    with pytest.raises(WeightsError, match="not a whole number of float32") as info:
        darkcfg.load(cfg, odd)
    assert str(odd) in str(info.value)


@pytest.mark.parametrize("data", [b"", b"\0" * 11, struct.pack("<iii", 0, 2, 5) + b"\0" * 4,
                                  struct.pack("<iii", 0, 1, 0) + b"\0\0"])
def test_shorter_than_header(tmp_path: Path, data: bytes) -> None:
    cfg = write_cfg(tmp_path)
    path = tmp_path / "tiny.weights"
    path.write_bytes(data)
    with pytest.raises(WeightsError, match="too short") as info:
        darkcfg.load(cfg, path)
    assert str(path) in str(info.value)


def test_missing_file_names_path(tmp_path: Path) -> None:
    cfg = write_cfg(tmp_path)
    missing = tmp_path / "nope" / "missing.weights"
    with pytest.raises(WeightsError) as info:
        darkcfg.load(cfg, missing)
    assert str(missing) in str(info.value)


def test_header_only_file_is_short(tmp_path: Path) -> None:
    cfg = write_cfg(tmp_path)
    path = write_weights(tmp_path / "empty.weights", np.zeros(0, np.float32))
    with pytest.raises(WeightsError, match=r"layer 0 \[convolutional\]"):
        darkcfg.load(cfg, path)


# --------------------------------------------------------------------------- (e) failed load is a no-op

def test_failed_load_changes_nothing(small, tmp_path: Path) -> None:
    cfg, weights, body = small
    model = darkcfg.load(cfg, weights)
    before, head = snapshot(model), model.header
    other = random_body(seed=99)
    bad_files = {
        "truncated": write_weights(tmp_path / "a.weights", other[:-1]),        # fails in the LAST block
        "extended": write_weights(tmp_path / "b.weights", np.concatenate([other, other[:2]])),
        "odd": tmp_path / "c.weights",
        "header": tmp_path / "d.weights",
        "missing": tmp_path / "e.weights",
    }
    bad_files["odd"].write_bytes(header() + other.tobytes() + b"\0")
    bad_files["header"].write_bytes(b"\0" * 10)
    for what, path in bad_files.items():
        with pytest.raises(WeightsError):
            model.load_weights(path)
        assert_same_state(model, before)
        assert model.header == head, what
    # a fresh (never loaded) model too
    fresh = darkcfg.load(cfg)
    before = snapshot(fresh)
    with pytest.raises(WeightsError):
        fresh.load_weights(bad_files["truncated"])
    assert_same_state(fresh, before)
    assert fresh.header is None


# --------------------------------------------------------------------------- (f) upto

def test_upto_loads_only_earlier_layers(small, tmp_path: Path) -> None:
    cfg, weights, body = small
    model = darkcfg.load(cfg)
    before = snapshot(model)
    model.load_weights(weights, upto=2)  # the file holds more: fine with upto
    n = 124 + 10
    assert_loaded(model, body[:n], CONV0 + CONV1)
    for k, v in before.items():
        if k.startswith("layers.3."):
            assert torch.equal(model.state_dict()[k], v), k
    # a partial file (like *.conv.NN) with exactly layers 0..1
    partial = write_weights(tmp_path / "small.conv.2", body[:n])
    model2 = darkcfg.load(cfg)
    model2.load_weights(partial, upto=2)
    assert_loaded(model2, body[:n], CONV0 + CONV1)
    with pytest.raises(WeightsError, match=r"layer 3 \[connected\].*upto"):
        darkcfg.load(cfg, partial)
    # upto beyond the last layer is the whole network
    model3 = darkcfg.load(cfg)
    model3.load_weights(weights, upto=100)
    assert_loaded(model3, body)
    # upto=1: only conv 0
    model4 = darkcfg.load(cfg)
    model4.load_weights(partial, upto=1)
    assert_loaded(model4, body[:124], CONV0)
    # save with upto writes the partial file back, with seen 0 as Darknet's `partial` writes it
    buf = io.BytesIO()
    model2.save_weights(buf, upto=2)
    expected = bytearray(partial.read_bytes())
    expected[12:20] = bytes(8)
    assert buf.getvalue() == bytes(expected)


# --------------------------------------------------------------------------- (g) dontload / dontloadscales

def test_dontload_consumes_nothing(tmp_path: Path) -> None:
    cfg = write_cfg(tmp_path, conv1="dontload=1")
    layout = CONV0 + FC
    body = random_body(layout, seed=5)
    weights = write_weights(tmp_path / "dl.weights", body)
    model = darkcfg.load(cfg)
    before = snapshot(model)
    model.load_weights(weights)
    assert_loaded(model, body, layout)
    for k in ("layers.1.conv.weight", "layers.1.conv.bias"):
        assert torch.equal(model.state_dict()[k], before[k]), k
    buf = io.BytesIO()
    model.save_weights(buf)
    assert buf.getvalue() == weights.read_bytes()


def test_dontloadscales_skips_bn_trio(tmp_path: Path) -> None:
    cfg = write_cfg(tmp_path, conv0="dontloadscales=1", fc="dontloadscales=1")
    layout = [CONV0[0], CONV0[4]] + CONV1 + FC[:2]
    body = random_body(layout, seed=6)
    weights = write_weights(tmp_path / "dls.weights", body)
    model = darkcfg.load(cfg)
    before = snapshot(model)
    model.load_weights(weights)
    assert_loaded(model, body, layout)
    for layer, bn in ((0, "layers.0.bn"), (3, "layers.3.bn")):
        for name in ("weight", "running_mean", "running_var"):
            assert torch.equal(model.state_dict()[f"{bn}.{name}"], before[f"{bn}.{name}"]), (layer, name)
    # a full file (with both trios: 3*4 + 3*5) is now 27 floats too long
    full = write_weights(tmp_path / "full.weights", random_body())
    with pytest.raises(WeightsError, match="27 floats are left over"):
        model.load_weights(full)
    buf = io.BytesIO()
    model.save_weights(buf)
    assert buf.getvalue() == weights.read_bytes()


# --------------------------------------------------------------------------- (i) (j) saving

def test_save_is_atomic(small, tmp_path: Path, monkeypatch) -> None:
    cfg, weights, body = small
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    model = darkcfg.load(cfg, weights)
    target = out_dir / "model.weights"
    model.save_weights(target)
    model.save_weights(target)  # overwrite
    assert sorted(os.listdir(out_dir)) == ["model.weights"]
    original = target.read_bytes()
    assert original == weights.read_bytes()

    # a save that fails while replacing leaves the original and no temp file
    other = darkcfg.load(cfg, write_weights(tmp_path / "other.weights", random_body(seed=7)))

    def boom(*args, **kwargs):
        raise OSError("simulated failure")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        other.save_weights(target)
    monkeypatch.undo()
    assert target.read_bytes() == original
    assert sorted(os.listdir(out_dir)) == ["model.weights"]

    # a directory that does not exist: raises, creates nothing
    nowhere = tmp_path / "missing-dir" / "x.weights"
    with pytest.raises(OSError):
        model.save_weights(nowhere)
    assert not nowhere.parent.exists()


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_saved_file_mode_follows_umask(small, tmp_path: Path) -> None:
    """Atomic save must not leak the temp file's private 0600 mode into the result."""
    cfg, weights, _ = small
    model = darkcfg.load(cfg, weights)
    old = os.umask(0o022)
    try:
        target = tmp_path / "mode.weights"
        model.save_weights(target)
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o644


def test_save_fused_model_raises(small, tmp_path: Path) -> None:
    cfg, weights, _ = small
    model = darkcfg.load(cfg, weights).fuse()
    target = tmp_path / "fused.weights"
    with pytest.raises(WeightsError, match="fused"):
        model.save_weights(target)
    assert not target.exists()
    with pytest.raises(WeightsError, match="fused"):
        model.save_weights(io.BytesIO())
    with pytest.raises(WeightsError, match="fused"):
        model.load_weights(weights)
