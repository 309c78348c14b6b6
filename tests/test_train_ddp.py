"""torchrun + DistributedDataParallel (gloo, 2 CPU processes) give one process's gradients and weights.

darkcfg's own tiny-train.cfg has no batch norm, so per-process BN statistics cannot differ.
"""

import os
import subprocess
import sys
from pathlib import Path

import torch

import darkcfg
from darkcfg.graph import build_graph
from darkcfg.cfg import read_cfg
from darkcfg.train.trainer import LossModule, accumulate_gradients
from darkcfg.weights import synthetic_weights

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from ddp_worker import fixed_batch, shard  # noqa: E402
from test_train_augment import write_dataset  # noqa: E402

CFG = "cfgs/tiny-train.cfg"


def torchrun(args, timeout=120):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] + args
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_two_gloo_processes_sum_to_the_single_process_gradients_and_weights(tmp_path):
    weights = tmp_path / "w.weights"
    weights.write_bytes(synthetic_weights(build_graph(read_cfg(CFG)), seed=7))
    data = write_dataset(tmp_path, n=4)
    common = [str(data), CFG, str(weights), "--workers", "0", "--max-batches", "3", "--seed", "4"]
    torchrun(["tests/ddp_worker.py", str(weights), str(tmp_path / "g.pt")] + common + ["--out", str(tmp_path / "ddp")])
    # 1) one batch of 4 in 2 subdivisions: gradients on 2 ranks (DDP average x world) == 1 process
    ddp_grads = torch.load(tmp_path / "g.pt")
    model = darkcfg.load(CFG, weights).train()
    x, targets = fixed_batch()
    accumulate_gradients(LossModule(model), shard(x, targets, 0, 1), torch.device("cpu"))
    for name, p in model.named_parameters():
        assert p.grad.abs().max() > 0, name
        torch.testing.assert_close(ddp_grads[name], p.grad, rtol=1e-4, atol=1e-5 * float(p.grad.abs().max()))
    # 2) `darkcfg train` for 3 iterations on 2 ranks (same launch) == in one process
    from darkcfg.cli import main

    assert main(["train"] + common + ["--out", str(tmp_path / "one")]) == 0
    a = darkcfg.load(CFG, tmp_path / "ddp" / "tiny-train_final.weights")
    b = darkcfg.load(CFG, tmp_path / "one" / "tiny-train_final.weights")
    start = darkcfg.load(CFG, weights)
    for (name, pa), pb, p0 in zip(a.named_parameters(), b.parameters(), start.parameters()):
        assert not torch.equal(pb, p0), name                  # training moved it
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-6)
