"""Helpers the fast-path tests share (test_fast_paths, test_direct_conv, test_winograd,
test_conformance): the eager/optimized model pair they compare, a call counter that says
whether a kernel really ran, and the float64 reference and error measure the kernels answer to."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable, List, Tuple

import pytest
import torch
import torch.nn.functional as F

import darkcfg
from darkcfg.layers.activations import ACTIVATIONS
from darkcfg.weights import synthetic_weights


def fused_and_optimized(cfg: Path, seed: int = 5) -> Tuple[darkcfg.Darknet, darkcfg.Darknet]:
    """(fused eager model, ``optimize()``d model) of ``cfg`` with the same well-scaled weights."""
    models = []
    for _ in range(2):
        m = darkcfg.load(cfg)
        m.load_weights(io.BytesIO(synthetic_weights(m.graph, seed=seed)))
        models.append(m)
    return models[0].fuse(), models[1].optimize()


#: A BN conv section; fill in filters (f), size (k), groups (g), activation (a).
CONV = "[convolutional]\nbatch_normalize=1\nfilters={f}\nsize={k}\nstride=1\npad=1\ngroups={g}\nactivation={a}\n"


def write_cfg(tmp_path: Path, name: str, sections: str) -> Path:
    """A test net: ``[net]`` of 40x24 RGB, then ``sections``, written to ``tmp_path / name``."""
    path = tmp_path / name
    path.write_text("[net]\nwidth=40\nheight=24\nchannels=3\n" + sections)
    return path


def optimized(cfg: Path, seed: int = 5) -> darkcfg.Darknet:
    """``cfg`` with well-scaled synthetic weights, ``optimize()``d."""
    m = darkcfg.load(cfg)
    m.load_weights(io.BytesIO(synthetic_weights(m.graph, seed=seed)))
    return m.optimize()


def with_and_without_fusions(m: darkcfg.Darknet, x: torch.Tensor) -> Tuple[List[torch.Tensor], List[torch.Tensor],
                                                                             List[torch.Tensor]]:
    """(``m(x)`` with its fused calls, ``m.layer_outputs(x)``, ``m(x)`` with none) under no_grad:
    what every fold is compared with (``m.fusions`` is restored)."""
    with torch.no_grad():
        fused = m(x)
        every = m.layer_outputs(x)
        plans, m.fusions = m.fusions, {}
        try:
            plain = m(x)
        finally:
            m.fusions = plans
    return fused, every, plain


def count_calls(monkeypatch: pytest.MonkeyPatch, kind: type) -> List[bool]:
    """Wrap ``kind.__call__`` (a kernel plan that returns None where it steps aside); the list
    gets, per call, whether the kernel produced the output."""
    calls: List[bool] = []
    original = kind.__call__

    def counted(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        y = original(self, *args, **kwargs)
        calls.append(y is not None)
        return y

    monkeypatch.setattr(kind, "__call__", counted)
    return calls


def nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to ``max(1, max|b|)`` (the conformance tests' scale)."""
    return float((a - b).abs().max()) / max(1.0, float(b.abs().max()))


def reference(conv: torch.nn.Conv2d, activation: str, x: torch.Tensor) -> torch.Tensor:
    """``conv`` + Darknet's activation in float64 (what every fast kernel must match to rounding)."""
    y = F.conv2d(x.contiguous().double(), conv.weight.double(), conv.bias.double(), conv.stride, conv.padding,
                 conv.dilation, conv.groups)
    return ACTIVATIONS[activation](y).float()


def one_and_two_threads(run: Callable[[], Any]) -> Tuple[Any, Any]:
    """``run()`` on 1 thread, then on 2, under ``torch.no_grad`` (the thread count restored after):
    the kernels split rows, pixels or products over threads, and no value may depend on where."""
    threads = torch.get_num_threads()
    try:
        with torch.no_grad():
            torch.set_num_threads(1)
            one = run()
            torch.set_num_threads(2)
            return one, run()
    finally:
        torch.set_num_threads(threads)
