"""Frame replays (darkcfg/replay.py): later frames of an input layout run as bound kernel calls,
bit-identical to the ordinary path, and step aside whenever what they fixed no longer holds."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import List

import pytest
import torch

import darkcfg
from darkcfg import native, replay
from darkcfg.layers.direct_conv import DirectConv

from fastpath_helpers import CONV, optimized, write_cfg

pytestmark = pytest.mark.skipif(native.library() is None, reason="the native kernels cannot be built here")


def _cfg(tmp_path: Path) -> Path:
    """A small depthwise net with every kind of step a replay binds: the stem conv, inverted
    residuals folded into one call (with and without a shortcut), a route read by a 1x1 alone and
    one read by a maxpool alone (both folded), a route concatenation, a lone maxpool, an upsample,
    and a head."""
    conv = lambda f, k, g=1, a="leaky": CONV.format(f=f, k=k, g=g, a=a)  # noqa: E731
    text = (conv(8, 3)                                                         # 0 stem
            + conv(24, 1) + conv(24, 3, 24) + conv(8, 1, a="linear")            # 1-3 block
            + "[shortcut]\nfrom=-4\nactivation=linear\n"                        # 4 (folded into 3)
            + conv(16, 1) + conv(16, 3, 16) + conv(16, 1, a="linear")           # 5-7 block
            + "[route]\nlayers=-1,-4\n" + conv(16, 1)                           # 8 route, folded into 9
            + "[route]\nlayers=-1,-3\n[maxpool]\nsize=2\nstride=2\n"            # 10 route, folded into 11
            + conv(32, 3, 8) + "[maxpool]\nsize=3\nstride=1\n"                  # 12 grouped, 13 lone pool
            + conv(32, 3, 32) + "[route]\nlayers=-1,-2,-3\n"                     # 14, 15 concatenation
            + conv(18, 1, a="linear") + "[upsample]\nstride=2\n"                # 16, 17
            + "[route]\nlayers=-1,7\n" + conv(34, 3, 34)                        # 18 concatenation, 19
            + conv(18, 1, a="linear")                                            # 20
            + "[yolo]\nmask=0,1,2\nanchors=4,4, 8,8, 12,12\nclasses=1\nnum=3\n")  # 21
    return write_cfg(tmp_path, "replay.cfg", text)


def _frames(m: darkcfg.Darknet, x: torch.Tensor, n: int = 3) -> List[List[torch.Tensor]]:
    with torch.inference_mode():
        return [m(x) for _ in range(n)]


def _ordinary(m: darkcfg.Darknet, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> List[torch.Tensor]:
    with monkeypatch.context() as mp:
        mp.setenv("DARKCFG_REPLAY", "0")
        with torch.inference_mode():
            return m(x)


def _same(a: List[torch.Tensor], b: List[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(p, q) for p, q in zip(a, b))


@pytest.fixture()
def model(tmp_path: Path) -> darkcfg.Darknet:
    m = optimized(_cfg(tmp_path), seed=7)
    assert m.channels_last and len(m.fusions) >= 4
    return m


def test_replayed_frames_are_bit_identical_and_skip_the_checks(model: darkcfg.Darknet,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.rand(2, 3, 24, 40)
    reference = _ordinary(model, x, monkeypatch)
    binds: list = []
    original = DirectConv.bind
    monkeypatch.setattr(DirectConv, "bind", lambda self, *a: binds.append(1) or original(self, *a))
    frames = _frames(model, x, 4)
    assert all(_same(f, reference) for f in frames)
    assert len(model.replays) == 1
    frame_replay = next(iter(model.replays.values()))
    recorded = len(binds)
    assert recorded > 0
    assert _same(_frames(model, x, 2)[-1], reference) and len(binds) == recorded  # later frames bind nothing
    bound = [s for s in frame_replay.steps if s[1].__qualname__.split(".")[0] not in ("_layer_step", "_fused_step")]
    assert len(bound) >= 9  # stem, 2 blocks, folded 1x1 and pool, grouped conv, pool, concatenations
    assert frame_replay.steps[-1][2] == len(model.layers) - 1


def test_each_layout_gets_its_own_replay(model: darkcfg.Darknet, monkeypatch: pytest.MonkeyPatch) -> None:
    for shape in [(1, 3, 24, 40), (3, 3, 24, 40), (1, 3, 48, 32)]:
        x = torch.rand(*shape)
        assert _same(_frames(model, x)[-1], _ordinary(model, x, monkeypatch))
    nchw = torch.rand(1, 3, 24, 40)
    nhwc = nchw.contiguous(memory_format=torch.channels_last)
    assert _same(_frames(model, nhwc)[-1], _ordinary(model, nchw, monkeypatch))
    assert len(model.replays) == 3  # (the model makes its input NHWC: both layouts are one replay)
    monkeypatch.setattr(replay, "MAX_REPLAYS", 3)
    x = torch.rand(2, 3, 24, 40)
    assert _same(_frames(model, x)[-1], _ordinary(model, x, monkeypatch))
    assert len(model.replays) == 3 and (1, 3, 24, 40) not in [key[0] for key in model.replays]  # the oldest went


def test_edited_or_replaced_weights_are_seen(model: darkcfg.Darknet, monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.rand(1, 3, 24, 40)
    before = _frames(model, x)[-1]
    conv = model.layers[6].conv  # a depthwise conv inside a fused block
    with torch.no_grad():
        conv.weight.mul_(1.5)  # in place: its version counter moves
    edited = _frames(model, x)[-1]
    assert not _same(edited, before) and _same(edited, _ordinary(model, x, monkeypatch))
    conv.bias = torch.nn.Parameter(conv.bias.detach() + 0.25)  # a new tensor
    replaced = _frames(model, x)[-1]
    assert not _same(replaced, edited) and _same(replaced, _ordinary(model, x, monkeypatch))
    pool = copy.deepcopy(model.layers[13])
    pool.size, pool.padding = 5, 4  # (a 5x5 window, the same output size)
    model.layers[13] = pool  # a swapped module
    swapped = _frames(model, x)[-1]
    assert not _same(swapped, replaced) and _same(swapped, _ordinary(model, x, monkeypatch))


def test_hooks_autograd_and_conversions_take_the_ordinary_path(model: darkcfg.Darknet,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.rand(1, 3, 24, 40)
    reference = _frames(model, x)[-1]
    seen: list = []
    handle = model.layers[0].register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    assert _same(_frames(model, x, 2)[-1], reference) and len(seen) == 2  # the hooked layer runs as a module
    handle.remove()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda mod, inp, out: seen.append(1))
    try:
        _frames(model, x, 1)
        assert len(seen) > 3  # a global hook sees every module again
    finally:
        handle.remove()
    with torch.no_grad():
        model.replays.clear()
        with torch.enable_grad():
            model(x)
    assert not model.replays  # autograd: no replay
    _frames(model, x, 1)
    assert model.replays
    model.float()  # (to / half / float: parameters may get new data in place)
    assert not model.replays
    _frames(model, x, 1)
    model.optimize()
    assert not model.replays


def test_copies_and_pickles_start_without_replays(model: darkcfg.Darknet, monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.rand(1, 3, 24, 40)
    reference = _frames(model, x)[-1]
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert not other.replays
        assert _same(_frames(other, x)[-1], reference) and other.replays


def test_a_refusing_fused_call_reruns_the_frame(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fused call with no bound form (a Winograd conv and its shortcut) runs each frame; if it
    refuses during a replay, the frame is run again the ordinary way (same outputs)."""
    from darkcfg import fusion
    from darkcfg.fusion import FoldedShortcut
    from darkcfg.layers import winograd

    monkeypatch.setattr(winograd, "choose", lambda *shape: 4)  # Winograd for every 3x3 whatever its cost
    text = (CONV.format(f=16, k=3, g=1, a="leaky") + CONV.format(f=16, k=3, g=1, a="leaky")
            + "[shortcut]\nfrom=-2\nactivation=linear\n" + CONV.format(f=16, k=3, g=16, a="leaky") * 3)
    m = optimized(write_cfg(tmp_path, "wino.cfg", text), seed=3)
    assert any(isinstance(f, FoldedShortcut) for f in m.fusions.values())
    x = torch.rand(1, 3, 24, 40)
    reference = _ordinary(m, x, monkeypatch)
    assert _same(_frames(m, x)[-1], reference)
    steps = next(iter(m.replays.values())).steps
    assert any(s[1].__qualname__.startswith("_fused_step") for s in steps)
    original = fusion.run
    monkeypatch.setattr(fusion, "run", lambda layers, chain, xs, outs: None if isinstance(chain, FoldedShortcut)
                        else original(layers, chain, xs, outs))
    assert _same(_frames(m, x, 2)[-1], _ordinary(m, x, monkeypatch))


def test_calls_refused_while_recording_become_layer_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fused call or kernel that refuses the first frame's inputs: the replay runs those layers
    one by one, as forward does (same outputs)."""
    from darkcfg import fusion

    m = optimized(_cfg(tmp_path), seed=7)
    x = torch.rand(1, 3, 24, 40)
    reference = _ordinary(m, x, monkeypatch)
    monkeypatch.setattr(fusion, "bind_block", lambda *a: None)
    monkeypatch.setattr(DirectConv, "bind_parts", lambda self, p: None)
    assert _same(_frames(m, x)[-1], reference)
    steps = next(iter(m.replays.values())).steps
    assert len(steps) == len(m.layers) - 1  # (only the route folded into its pool is still one step)


def test_real_yolo_fastest_replays_bit_identically(shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = shared / "darknet" / "yolo-fastest" / "yolo-fastest-1.1_coco"
    m = darkcfg.load(folder / "yolo-fastest-1.1.cfg", folder / "yolo-fastest-1.1.weights").optimize()
    x = torch.rand(2, 3, 320, 320)
    assert _same(_frames(m, x)[-1], _ordinary(m, x, monkeypatch))
    steps = next(iter(m.replays.values())).steps
    assert len(steps) < 50  # 131 layers: 28 fused blocks, the rest one step each
