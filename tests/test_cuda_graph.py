"""``optimize(cuda_graph=True)`` (darkcfg/cuda_graph.py).

On a machine without CUDA (CI's) the bookkeeping around the capture is checked with a stand-in
capture that records nothing and "replays" by running the eager forward into the static output
tensors -- signatures, clones, invalidation and the eager fallbacks are the same code either way.
What only a GPU can show (the real capture's outputs agreeing with the eager forward, in fp32
and fp16) is in the tests marked ``needs_cuda``, which run wherever torch sees a CUDA device
(``bench/gpu_check.py`` runs them on one).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable, List

import pytest
import torch

import darkcfg
from darkcfg import cuda_graph
from darkcfg.weights import synthetic_weights
from fastpath_helpers import CONV, write_cfg

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch sees none here)")

SECTIONS = (CONV.format(f=8, k=3, g=1, a="leaky") + "[maxpool]\nsize=2\nstride=2\n"
            + CONV.format(f=8, k=3, g=1, a="mish") + "[shortcut]\nfrom=-2\nactivation=linear\n"
            + "[convolutional]\nfilters=18\nsize=1\nstride=1\npad=1\nactivation=linear\n"
            + "[yolo]\nmask=0,1,2\nanchors=4,5, 8,9, 12,14\nclasses=1\nnum=3\n")


class _StandInGraph:
    """Replays by running the eager forward on the static input, into the static outputs."""

    def __init__(self, eager: Callable[[torch.Tensor], List[torch.Tensor]], static_in: torch.Tensor,
                 static_outs: List[torch.Tensor]):
        self.eager, self.static_in, self.static_outs = eager, static_in, static_outs
        self.replays = 0

    def replay(self) -> None:
        self.replays += 1
        for out, new in zip(self.static_outs, self.eager(self.static_in)):
            out.copy_(new)


def _stand_in_capture(eager: Callable[[torch.Tensor], List[torch.Tensor]], x: torch.Tensor, pool: Any) -> Any:
    static_in = x.clone()
    outs = list(eager(static_in))
    return cuda_graph._Captured(_StandInGraph(eager, static_in, outs), static_in, outs)  # type: ignore[arg-type]


def _model(tmp_path: Path, device: str = "cpu") -> darkcfg.Darknet:
    m = darkcfg.load(write_cfg(tmp_path, "g.cfg", SECTIONS), device=device)
    m.load_weights(io.BytesIO(synthetic_weights(m.graph, seed=4)))
    return m


def _graphed(tmp_path: Path) -> tuple[darkcfg.Darknet, darkcfg.Darknet, cuda_graph.GraphedForward]:
    """(an eager optimize()d model, the same with the stand-in graphs, its GraphedForward)."""
    eager, graphed = _model(tmp_path).optimize(), _model(tmp_path).optimize()
    forward = cuda_graph.GraphedForward(graphed, capture=_stand_in_capture)
    graphed.forward = forward  # type: ignore[method-assign]
    return eager, graphed, forward


def test_replays_per_input_signature_and_returns_clones(tmp_path: Path) -> None:
    eager, graphed, forward = _graphed(tmp_path)
    x1, x2 = torch.rand(1, 3, 24, 40), torch.rand(1, 3, 24, 40)
    with torch.no_grad():
        first = graphed(x1)
        kept = [t.clone() for t in first]
        second = graphed(x2)
        assert forward.captures == 1 and len(forward.graphs) == 1  # one signature, one capture
        assert all(torch.equal(a, b) for a, b in zip(first, kept))  # the next frame did not overwrite it
        assert all(torch.equal(a, b) for a, b in zip(second, eager(x2)))
        assert all(torch.equal(a, b) for a, b in zip(first, eager(x1)))
        graphed(torch.rand(2, 3, 24, 40))  # another batch: another graph
        graphed(torch.rand(1, 3, 24, 40).contiguous(memory_format=torch.channels_last))  # other strides
        assert forward.captures == 3
        graphed(x1)
        assert forward.captures == 3


def test_oldest_graph_goes_beyond_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cuda_graph, "MAX_GRAPHS", 2)
    _, graphed, forward = _graphed(tmp_path)
    with torch.no_grad():
        for batch in (1, 2, 3):
            graphed(torch.rand(batch, 3, 24, 40))
    assert [key[0][0] for key in forward.graphs] == [2, 3]


def test_autograd_and_hooks_take_the_eager_forward(tmp_path: Path) -> None:
    _, graphed, forward = _graphed(tmp_path)
    x = torch.rand(1, 3, 24, 40)
    with torch.enable_grad():
        out = graphed(x)
    assert forward.captures == 0 and out[0].requires_grad  # autograd: no capture, a graph to backward through
    seen: List[int] = []
    handle = graphed.layers[0].register_forward_hook(lambda *a: seen.append(1))
    with torch.no_grad():
        graphed(x)
    assert seen == [1] and forward.captures == 0  # the hook ran: eager
    handle.remove()
    graphed.train()
    with torch.no_grad():
        graphed(x)
    assert forward.captures == 0  # training mode: eager
    graphed.eval()
    with torch.no_grad():
        graphed(x)
    assert forward.captures == 1


def test_moved_or_replaced_tensors_drop_the_graphs(tmp_path: Path) -> None:
    """A capture reads the parameters where they were: ``to(dtype)`` (new data in the same
    Parameter objects) and a replaced parameter both make the next call capture anew, with
    outputs from the new values."""
    eager, graphed, forward = _graphed(tmp_path)
    x = torch.rand(1, 3, 24, 40)
    with torch.no_grad():
        graphed(x)
        graphed.double()
        graphed.float()  # back to float32, at new addresses
        assert not forward.graphs
        graphed(x)
        assert forward.captures == 2
        conv = graphed.layers[0].conv
        conv.weight = torch.nn.Parameter(conv.weight * 2)
        eager.layers[0].conv.weight = torch.nn.Parameter(eager.layers[0].conv.weight * 2)
        out = graphed(x)
        assert forward.captures == 3
        assert all(torch.equal(a, b) for a, b in zip(out, eager(x)))


def test_cuda_graph_needs_a_cuda_model_and_excludes_compile(tmp_path: Path) -> None:
    with pytest.raises(darkcfg.DarkcfgError, match="CUDA device"):
        _model(tmp_path).optimize(cuda_graph=True)
    with pytest.raises(darkcfg.DarkcfgError, match="choose one"):
        _model(tmp_path).optimize(compile=True, cuda_graph=True)


@needs_cuda
@pytest.mark.parametrize("dtype", [None, torch.float16])
def test_real_cuda_graph_matches_the_eager_forward(tmp_path: Path, dtype: Any) -> None:
    eager = _model(tmp_path, "cuda").optimize(dtype=dtype)
    graphed = _model(tmp_path, "cuda").optimize(dtype=dtype, cuda_graph=True)
    xs = [torch.rand(b, 3, 24, 40, device="cuda") for b in (1, 1, 2)]
    with torch.inference_mode():
        outs = [graphed(x) for x in xs]
        for x, out in zip(xs, outs):
            for a, b in zip(out, eager(x)):
                assert a.dtype == torch.float32 and torch.allclose(a, b, rtol=1e-3, atol=1e-3)
    assert graphed.forward.captures == 2  # type: ignore[attr-defined]


def test_gpu_check_pack_mirrors_what_conformance_reads(shared: Path, tmp_path: Path) -> None:
    """``bench/gpu_check.py pack`` (the device machine does not see ../shared): the packed folder,
    used as ``--shared``, holds everything its cases read -- each runs and passes from it."""
    import subprocess
    import sys

    from darkcfg.conformance import find_cases, load_make_weights, run_case

    out = tmp_path / "pack"
    script = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
    done = subprocess.run([sys.executable, str(script), "pack", "--shared", str(shared), "--out", str(out),
                           "--mib", "10"], capture_output=True, text=True, check=True)
    assert "packed" in done.stdout
    assert sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) <= 10 * 2 ** 20  # (9 MiB: detectors)
    assert (out / "darknet/cfg/yolov4.cfg").read_bytes() == (shared / "darknet/cfg/yolov4.cfg").read_bytes()
    cases = list(find_cases(out / "conformance/cases", []))
    assert cases
    mw = load_make_weights(out / "conformance")
    for case in cases:
        result = run_case(case, out, mw)
        assert result.passed, (case.name, result.failures)


def test_inference_mode_and_no_grad_calls_mix(tmp_path: Path) -> None:
    """A graph captured under ``inference_mode`` replays under ``no_grad`` and the other way
    round (its static input must not be an inference tensor, which ``no_grad`` could not write)."""
    eager, graphed, forward = _graphed(tmp_path)
    x = torch.rand(1, 3, 24, 40)
    with torch.inference_mode():
        a = graphed(x)
    with torch.no_grad():
        b = graphed(x)
        graphed(torch.rand(2, 3, 24, 40))
    with torch.inference_mode():
        c = graphed(torch.rand(2, 3, 24, 40))
        ref = eager(x)
    assert forward.captures == 2
    assert all(torch.equal(p, q) and torch.equal(q, r) for p, q, r in zip(a, b, ref))
    assert c[0].shape[0] == 2


def test_copies_and_pickles_get_their_own_graphs(tmp_path: Path) -> None:
    import copy
    import pickle

    eager, graphed, forward = _graphed(tmp_path)
    x = torch.rand(1, 3, 24, 40)
    with torch.no_grad():
        graphed(x)
        for twin in (copy.deepcopy(graphed), pickle.loads(pickle.dumps(graphed))):
            twin_forward = twin.forward
            assert isinstance(twin_forward, cuda_graph.GraphedForward) and twin_forward is not forward
            assert twin_forward.model is twin and not twin_forward.graphs
            assert all(torch.equal(a, b) for a, b in zip(twin(x), eager(x)))
            assert twin_forward.captures == 1 and forward.captures == 1


def test_a_later_optimize_drops_the_graphed_forward(tmp_path: Path) -> None:
    _, graphed, forward = _graphed(tmp_path)
    assert graphed.forward is forward
    graphed.optimize()
    assert "forward" not in graphed.__dict__  # the class's eager forward again
