"""Run by tests/test_train_ddp.py under torchrun: one batch's gradients through DDP, per rank's shard.

Usage: python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py WEIGHTS OUT [TRAIN ARGS]

Then, in the same process group (one launch: starting torch processes is the slow part on
2 cores), ``darkcfg train TRAIN ARGS`` as ``torchrun -m darkcfg train`` would run it.
"""

import sys

import torch

import darkcfg
from darkcfg.train.distributed import init_distributed, shutdown
from darkcfg.train.trainer import LossModule, accumulate_gradients


def fixed_batch(n=4, size=64):
    g = torch.Generator().manual_seed(123)
    x = torch.rand(n, 3, size, size, generator=g)
    targets = [torch.tensor([[0.2 + 0.15 * i, 0.5, 0.3, 0.25, i % 2], [0.7, 0.3, 0.2, 0.4, (i + 1) % 2]])
               for i in range(n)]
    return x, targets


def shard(x, targets, rank, world, subdivisions=2):
    """Darknet's mini-batches (batch/subdivisions), each split contiguously over the ranks."""
    mb = x.shape[0] // subdivisions
    per = mb // world
    out = []
    for k in range(subdivisions):
        lo = k * mb + rank * per
        out.append((x[lo:lo + per], targets[lo:lo + per]))
    return out


def main(weights, out, train_args):
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = darkcfg.load("cfgs/tiny-train.cfg", weights).train()
    ddp = DDP(LossModule(model))
    x, targets = fixed_batch()
    cost, n = accumulate_gradients(ddp, shard(x, targets, info.rank, info.world), info.device, info.world)
    if info.rank == 0:
        torch.save({name: p.grad.clone() for name, p in model.named_parameters()}, out)
    if train_args:
        from darkcfg.cli import main as cli_main

        rc = cli_main(["train"] + train_args)  # reuses the open process group, closes it at the end
        if rc:
            raise SystemExit(rc)
    shutdown(info)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
