"""Darknet module behaviour: fuse/optimize equivalence, dtypes, devices, input checks."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

import darkcfg
from darkcfg.weights import synthetic_weights

REPO = Path(__file__).resolve().parents[1]
CFGS = sorted((REPO / "cfgs").glob("*.cfg"))


def _model(cfg: Path) -> darkcfg.Darknet:
    model = darkcfg.load(cfg)
    model.load_weights(io.BytesIO(synthetic_weights(model.graph, seed=3)))
    return model


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) / max(1.0, float(b.abs().max()))


@pytest.mark.parametrize("cfg", CFGS, ids=[p.stem for p in CFGS])
def test_fuse_and_optimize_keep_outputs(cfg: Path) -> None:
    torch.manual_seed(0)
    ref_model = _model(cfg)
    x = torch.rand(2, ref_model.channels, ref_model.height, ref_model.width)
    with torch.no_grad():
        ref = ref_model(x)
        fused = _model(cfg).fuse()(x)
        optimized_model = _model(cfg).optimize()
        optimized = optimized_model(x)
        every = optimized_model.layer_outputs(x)
    assert len(every) == len(ref_model.layers)
    for r, f, o in zip(ref, fused, optimized):
        assert _rel(f, r) < 1e-5 and _rel(o, r) < 1e-5
        assert o.is_contiguous()


def test_optimize_picks_nhwc_for_depthwise_nets(tmp_path: Path) -> None:
    depthwise = tmp_path / "dw.cfg"
    depthwise.write_text("[net]\nwidth=16\nheight=16\nchannels=3\n"
                         "[convolutional]\nfilters=8\nsize=1\nactivation=leaky\n"
                         "[convolutional]\nfilters=8\ngroups=8\nsize=3\npad=1\nactivation=leaky\n")
    model = darkcfg.load(depthwise).optimize()
    assert model.prefers_channels_last() and model.channels_last
    assert model.layers[1].conv.weight.is_contiguous(memory_format=torch.channels_last)
    dense = _model(REPO / "cfgs" / "tiny-region.cfg").optimize()
    assert not dense.prefers_channels_last() and not dense.channels_last


def test_half_precision_forward() -> None:
    model = _model(REPO / "cfgs" / "tiny-yolo-all.cfg").fuse()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        half = model.half()(x.half())
    for h, r in zip(half, ref):
        assert h.dtype == torch.float16 and torch.isfinite(h).all()
        assert _rel(h, r) < 2e-2


def test_wrong_input_shape_names_the_expected_one() -> None:
    model = darkcfg.load(REPO / "cfgs" / "tiny-classifier.cfg")
    with pytest.raises(darkcfg.DarkcfgError, match=r"expected input N x 3 x H x W"):
        model(torch.rand(1, 1, 32, 32))
    assert model(torch.rand(1, 3, 64, 64))[0].shape == model(torch.rand(1, 3, 32, 32))[0].shape  # any size


def test_bad_devices_are_clear_errors() -> None:
    with pytest.raises(darkcfg.DarkcfgError, match="invalid device"):
        darkcfg.load(REPO / "cfgs" / "tiny-classifier.cfg", device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(darkcfg.DarkcfgError, match="CUDA is not available"):
            darkcfg.load(REPO / "cfgs" / "tiny-classifier.cfg", device="cuda")


@pytest.mark.parametrize("cfg", CFGS, ids=[p.stem for p in CFGS])
def test_forward_releases_only_unread_outputs(cfg: Path) -> None:
    """forward drops each intermediate after its last reader and still returns what layer_outputs does."""
    model = _model(cfg)
    read_after: dict[int, int] = {}
    for i, inputs in enumerate(model.layer_inputs):
        for j in inputs:
            read_after[j] = max(read_after.get(j, j), i)
    released = [j for i, js in enumerate(model.release_after) for j in js]
    assert len(released) == len(set(released)) == len(model.layers) - len(set(model.output_layers))
    for i, js in enumerate(model.release_after):
        for j in js:
            assert j not in model.output_layers and read_after.get(j, j) == i
    x = torch.rand(1, model.channels, model.height, model.width)
    with torch.no_grad():
        outs = model(x)
        every = model.layer_outputs(x)
    for o, i in zip(outs, model.output_layers):
        assert torch.equal(o, every[i].contiguous())
