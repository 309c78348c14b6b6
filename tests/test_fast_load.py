"""``darkcfg.load(cfg, weights)`` builds without the random initialisation the file overwrites
(:mod:`darkcfg.fast_build`) and reads each block straight into its tensor (``fresh``); ``optimize()``
folds BN in place.  These check that the fast paths give exactly what the slow ones give."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import darkcfg
from darkcfg import WeightsError
from darkcfg.cfg import read_cfg
from darkcfg.graph import build_graph
from darkcfg.model import Darknet
from darkcfg.weights import synthetic_weights

from test_weights import CONV0, FC, random_body, write_cfg, write_weights  # tests/ is on sys.path (rootdir conftest)

ROOT = Path(__file__).resolve().parents[1]
OWN_CFGS = sorted((ROOT / "cfgs").glob("*.cfg"))


def _slow_load(cfg: Path, weights: Path) -> Darknet:
    """The reference: a normally initialised model, then the staged (all-or-nothing) load."""
    model = Darknet(build_graph(read_cfg(cfg)))
    model.load_weights(weights)
    return model.eval()


@pytest.mark.parametrize("cfg", OWN_CFGS, ids=[p.stem for p in OWN_CFGS])
def test_fast_load_equals_staged_load(cfg: Path, tmp_path: Path) -> None:
    graph = build_graph(read_cfg(cfg))
    weights = tmp_path / "w.weights"
    weights.write_bytes(synthetic_weights(graph, seed=3))
    fast, slow = darkcfg.load(cfg, weights), _slow_load(cfg, weights)
    a, b = fast.state_dict(), slow.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert fast.header == slow.header == weights.read_bytes()[:20]
    x = torch.rand(1, graph.net.channels, graph.net.height, graph.net.width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p, q in zip(fast(x), slow(x)):
            assert torch.equal(p, q)  # blocks are copied, never adopted as views: bit-identical


def test_dontload_layer_gets_darknet_init(tmp_path: Path) -> None:
    """The layer the file skips must hold Darknet's init (uniform +-sqrt(2/fan_in), bias 0),
    not the uninitialised memory the covered layers start from."""
    cfg = write_cfg(tmp_path, conv1="dontload=1")
    body = random_body(CONV0 + FC, seed=5)
    model = darkcfg.load(cfg, write_weights(tmp_path / "dl.weights", body))
    w, b = model.layers[1].conv.weight.detach(), model.layers[1].conv.bias.detach()
    bound = math.sqrt(2.0 / (w.shape[1] * w.shape[2] * w.shape[3]))
    assert torch.isfinite(w).all() and float(w.abs().max()) <= bound
    assert float(w.std()) > 0.2 * bound  # really drawn, not left at zero
    assert torch.equal(b, torch.zeros_like(b))


def test_dontloadscales_bn_gets_init(tmp_path: Path) -> None:
    cfg = write_cfg(tmp_path, conv0="dontloadscales=1", fc="dontloadscales=1")
    layout = [CONV0[0], CONV0[4]] + [(1, "biases", 2), (1, "weights", 8)] + FC[:2]
    body = random_body(layout, seed=6)
    model = darkcfg.load(cfg, write_weights(tmp_path / "dls.weights", body))
    for i in (0, 3):
        bn = model.layers[i].bn
        assert torch.equal(bn.weight, torch.ones_like(bn.weight))
        assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))
    np.testing.assert_array_equal(model.layers[0].bn.bias.detach().numpy(), body[:4])  # biases still loaded


def test_failed_fast_load_leaves_init_working(tmp_path: Path) -> None:
    """A failed load raises before anything is returned, and the skip-init mode does not leak."""
    cfg = write_cfg(tmp_path)
    short = write_weights(tmp_path / "short.weights", random_body()[:-1])
    with pytest.raises(WeightsError, match=r"layer 3 \[connected\]"):
        darkcfg.load(cfg, short)
    conv = torch.nn.Conv2d(4, 8, 3)
    w = conv.weight.detach()
    assert float(w.std()) > 0 and float(w.abs().max()) <= 1 / math.sqrt(36)


def test_fuse_in_place_is_darknet_float64_fold(tmp_path: Path) -> None:
    cfg = write_cfg(tmp_path)
    model = darkcfg.load(cfg, write_weights(tmp_path / "w.weights", random_body(seed=2)))
    conv = model.layers[0]
    w, bn = conv.conv.weight.detach().clone(), conv.bn
    k = bn.weight.double() / torch.sqrt(bn.running_var.double() + 0.00001)  # AlexeyAB's normalize_cpu
    expect_w = (w.double() * k.view(-1, 1, 1, 1)).float()
    expect_b = (bn.bias.double() - bn.running_mean.double() * k).float()
    model.optimize()
    assert conv.bn is None
    assert torch.equal(conv.conv.weight, expect_w) and torch.equal(conv.conv.bias, expect_b)


def test_fresh_file_load_reads_into_the_tensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``load(cfg, path)`` reads each block straight into its tensor: no whole-file buffer, and
    the same located errors as the staged path (NaN/Inf, left-over floats, a short file)."""
    from darkcfg import weights as W

    cfg = ROOT / "cfgs" / "tiny-yolo-all.cfg"
    graph = build_graph(read_cfg(cfg))
    path = tmp_path / "w.weights"
    data = bytearray(synthetic_weights(graph, seed=4))
    path.write_bytes(bytes(data))
    slow = _slow_load(cfg, path)

    def no_buffer(*args: object) -> None:
        raise AssertionError("the fresh path must not stage the whole file")

    monkeypatch.setattr(W, "_aligned_buffer", no_buffer)
    fast = darkcfg.load(cfg, path)
    for k, v in slow.state_dict().items():
        assert torch.equal(fast.state_dict()[k], v), k
    nan = bytearray(data)
    nan[20 + 4 * 5:20 + 4 * 6] = np.float32(math.nan).tobytes()  # inside layer 0's first block
    path.write_bytes(bytes(nan))
    with pytest.raises(WeightsError, match=r"layer 0 \[convolutional\].*NaN"):
        darkcfg.load(cfg, path)
    path.write_bytes(bytes(data) + b"\0" * 8)
    with pytest.raises(WeightsError, match="2 floats are left over"):
        darkcfg.load(cfg, path)
    monkeypatch.undo()  # a short file goes through the staged path, whose error names the layer
    path.write_bytes(bytes(data[:-8]))
    with pytest.raises(WeightsError, match="file ends inside layer"):
        darkcfg.load(cfg, path)


@pytest.mark.parametrize("size", [1, 7, 65535, 65536 * 3 + 5])
def test_native_finite_check_finds_every_nan_and_inf(size: int) -> None:
    """The load's one-pass NaN/Inf count (split over threads above 65536 values) agrees with numpy
    wherever the bad value sits; denormals, FLT_MAX and -0.0 are finite."""
    from darkcfg import native

    if native.library() is None:
        pytest.skip("no C compiler here: numpy's isfinite checks the weights instead")
    rng = np.random.default_rng(size)
    clean = rng.standard_normal(size).astype(np.float32)
    clean[::5] = np.float32(1e-45)
    clean[1::7] = np.finfo(np.float32).max
    clean[2::11] = -0.0
    assert native.all_finite(clean) is True
    for bad in (np.nan, np.inf, -np.inf):
        for at in {0, size // 2, size - 1}:
            values = clean.copy()
            values[at] = bad
            assert native.all_finite(values) is False, (bad, at)
    assert native.all_finite(clean.astype(np.float64)) is None  # not float32: numpy's check runs


BIG = ("[net]\nwidth=16\nheight=16\nchannels=8\n"
       + "[convolutional]\nbatch_normalize=1\nfilters=512\nsize=3\nstride=1\npad=1\nactivation=leaky\n"
       + "[convolutional]\nfilters=512\nsize=3\nstride=1\npad=1\nactivation=leaky\n"
       + "[convolutional]\nbatch_normalize=1\nfilters=64\nsize=1\nstride=1\npad=1\nactivation=leaky\n")


@pytest.mark.parametrize("threads", [2, 3])
def test_parallel_fresh_read_equals_one_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: int) -> None:
    """Files over 8 MiB are read in one run per torch thread at once (pread): the tensors, the
    header and the located NaN error are those of the one-thread read."""
    from darkcfg import weights as W

    cfg = tmp_path / "big.cfg"
    cfg.write_text(BIG)
    data = bytearray(synthetic_weights(build_graph(read_cfg(cfg)), seed=8))
    assert len(data) > 9 * 2 ** 20
    path = tmp_path / "big.weights"
    path.write_bytes(bytes(data))
    runs: list[int] = []
    split = W._split_by_bytes

    def counted(jobs: list, parts: int) -> list:
        found = split(jobs, parts)
        runs.append(len(found))
        return found

    monkeypatch.setattr(W, "_split_by_bytes", counted)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = darkcfg.load(cfg, path)
        torch.set_num_threads(threads)
        many = darkcfg.load(cfg, path)
        assert runs[0] == 1 and 1 < runs[1] <= threads  # one reader, then several
        for k, v in one.state_dict().items():
            assert torch.equal(many.state_dict()[k], v), k
        assert many.header == one.header == bytes(data[:20])
        bad = bytearray(data)
        at = len(data) - 4 * 100  # in the last layer's weights: the last run
        bad[at:at + 4] = np.float32(math.inf).tobytes()
        path.write_bytes(bytes(bad))
        with pytest.raises(WeightsError, match=r"layer 2 \[convolutional\] 'weights': 1 NaN/Inf"):
            darkcfg.load(cfg, path)
    finally:
        torch.set_num_threads(prev)


def test_split_by_bytes_keeps_order_and_balances() -> None:
    from darkcfg.weights import _split_by_bytes

    sizes = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5] * 2 ** 18  # 2**18 floats each: 1 MiB
    jobs = [(None, np.empty(s * 2 ** 18, np.float32), i) for i, s in enumerate(sizes[:11])]
    for parts in (1, 2, 3, 4):
        runs = _split_by_bytes(jobs, parts)
        assert [job for run in runs for job in run] == jobs and 1 <= len(runs) <= parts
        if parts > 1:
            assert len(runs) > 1
            shares = [sum(j[1].nbytes for j in run) for run in runs]
            assert max(shares) <= sum(shares) / len(runs) + 9 * 2 ** 20  # within one block of even
    small = [(None, np.empty(1000, np.float32), 0)]
    assert _split_by_bytes(small, 4) == [small]  # a small file: one reader


def test_pread_into_reports_a_file_that_shrank(tmp_path: Path) -> None:
    import os

    from darkcfg.fileio import pread_into

    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(100)))
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = bytearray(40)
        pread_into(fd, memoryview(buf), 50, "f.bin", WeightsError)
        assert bytes(buf) == bytes(range(50, 90))
        with pytest.raises(WeightsError, match=r"f.bin: file shrank while being read \(30 of 40 bytes at offset 70\)"):
            pread_into(fd, memoryview(buf), 70, "f.bin", WeightsError)
    finally:
        os.close(fd)


def test_load_pauses_the_garbage_collector_and_restores_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The collector is off while the model is built and loaded, and left as it was found --
    also when the load fails, and when the caller had it off."""
    import gc

    from darkcfg import fast_build

    cfg = write_cfg(tmp_path)
    good = write_weights(tmp_path / "w.weights", random_body(seed=1))
    short = write_weights(tmp_path / "short.weights", random_body()[:-1])
    seen: list[bool] = []
    build = fast_build.build_for_weights

    def watched(*args: object, **kwargs: object) -> Darknet:
        seen.append(gc.isenabled())
        return build(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fast_build, "build_for_weights", watched)
    assert gc.isenabled()
    darkcfg.load(cfg, good)
    assert seen == [False] and gc.isenabled()
    with pytest.raises(WeightsError):
        darkcfg.load(cfg, short)
    assert gc.isenabled()
    gc.disable()
    try:
        darkcfg.load(cfg, good)
        assert not gc.isenabled()  # the caller's choice stands
    finally:
        gc.enable()


def test_optimize_pauses_the_garbage_collector_and_restores_it(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """``optimize()`` too runs its fold and kernel set-up with the collector off, then restores it."""
    import gc

    from darkcfg.layers import conv

    model = darkcfg.load(write_cfg(tmp_path), write_weights(tmp_path / "w.weights", random_body(seed=2)))
    seen: list[bool] = []
    fuse = conv.fuse_convs
    monkeypatch.setattr(conv, "fuse_convs", lambda layers: (seen.append(gc.isenabled()), fuse(layers))[1])
    assert gc.isenabled()
    model.optimize()
    assert seen == [False] and gc.isenabled() and model.fused


def test_random_draw_interception_only_where_a_module_draws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Graphs of layer types that draw nothing at random build without the interception mode
    (it costs every torch call of the build); a [connected] layer (nn.Linear draws) brings it
    back, and its weights still skip the draw (the mode records it)."""
    from darkcfg import fast_build

    entered: list[int] = []
    real = fast_build._SkipRandomFills.__enter__

    def enter(self: fast_build._SkipRandomFills) -> fast_build._SkipRandomFills:
        entered.append(1)
        return real(self)

    monkeypatch.setattr(fast_build._SkipRandomFills, "__enter__", enter)
    for name in ("tiny-yolo-all", "tiny-region"):  # conv, route, maxpool, upsample, shortcut, yolo, region...
        fast_build.build_for_weights(build_graph(read_cfg(ROOT / "cfgs" / f"{name}.cfg")))
    assert entered == []
    fast_build.build_for_weights(build_graph(read_cfg(write_cfg(tmp_path))))  # conv, ..., [connected]
    assert entered == [1]


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_read_at_in_parallel_parts_reads_every_byte(tmp_path: Path, threads: int) -> None:
    """The staged load's buffer fill: equal parts read at once above PARALLEL_READ_BYTES, the
    same bytes as one read; a file shorter than the view is a located error either way."""
    from darkcfg.fileio import PARALLEL_READ_BYTES, read_at

    data = np.random.default_rng(threads).integers(0, 256, PARALLEL_READ_BYTES + 4099, dtype=np.uint8).tobytes()
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    with open(path, "rb") as f:
        buf = bytearray(len(data) - 20)
        read_at(f, memoryview(buf), 20, "big.bin", WeightsError, threads)
        assert bytes(buf) == data[20:]
        with pytest.raises(WeightsError, match="big.bin: file shrank"):
            read_at(f, memoryview(bytearray(len(data))), 20, "big.bin", WeightsError, threads)


def test_staged_load_reads_the_same_in_parallel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``model.load_weights(path)`` on an existing model (the staged, all-or-nothing path) with the
    file read in parallel parts: the same tensors as the fresh load of the file."""
    from darkcfg import weights as W

    cfg = tmp_path / "big.cfg"
    cfg.write_text(BIG)
    path = tmp_path / "big.weights"
    path.write_bytes(synthetic_weights(build_graph(read_cfg(cfg)), seed=12))
    used: list[int] = []
    real = W.read_at

    def counted(f, view, offset, name, error, threads=1):  # type: ignore[no-untyped-def]
        used.append(threads)
        return real(f, view, offset, name, error, 2)

    monkeypatch.setattr(W, "read_at", counted)
    staged = darkcfg.load(cfg)
    staged.load_weights(path)
    assert used  # the staged path read through it
    fresh = darkcfg.load(cfg, path)
    for k, v in fresh.state_dict().items():
        assert torch.equal(staged.state_dict()[k], v), k
