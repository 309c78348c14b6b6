"""The training loop of ``darkcfg train`` (Darknet's ``train_detector``).

One iteration = ``subdivisions`` forward/backward passes of ``batch/subdivisions`` images
each, gradients summed, then one :class:`~darkcfg.train.sgd.DarknetSGD` update at the
rate :func:`~darkcfg.train.lr.learning_rate` gives for the new iteration count.  The
reported loss is Darknet's: the network cost summed over the batch, per image; the
average loss is its 0.9/0.1 running mean.  ``seen`` (images trained on) is kept on the
model and written into every checkpoint's header, so a resumed run continues at the
same iteration, learning rate and [region] warm-up.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..cfg import read_cfg
from ..datafile import DataFile, list_images, parse_data_file
from ..errors import DarkcfgError, WeightsError
from ..graph import build_graph
from ..weights import parse_header

if TYPE_CHECKING:
    from ..model import Darknet
from .checkpoint import Checkpoints
from .dataset import BatchPlan, DetectionDataset, collate
from .distributed import DistInfo, all_reduce_sum, barrier, convert_sync_batchnorm, init_distributed, shutdown
from .lr import learning_rate
from .settings import TrainSettings, read_train_settings
from .sgd import DarknetSGD, make_optimizer


@dataclass
class TrainOptions:
    """Everything ``darkcfg train`` accepts (see ``darkcfg train --help``)."""

    data: str
    cfg: str
    weights: Optional[str] = None
    clear: bool = False
    device: Optional[str] = None
    workers: int = 2
    out: Optional[str] = None
    map: bool = False
    seed: int = 0
    amp: str = "auto"            # auto (on for CUDA) | on | off
    sync_bn: bool = False
    overwrite: bool = False
    max_batches: Optional[int] = None
    batch: Optional[int] = None
    subdivisions: Optional[int] = None
    augment: bool = True
    progress: Optional[bool] = None  # None: a live bar on a terminal, a line every 10 s otherwise
    find_unused: bool = False
    sampling: str = "random"         # random (Darknet: with replacement) | epoch (each image once per pass)


@dataclass
class TrainResult:
    iterations: int
    seen: int
    losses: List[float] = field(default_factory=list)
    rates: List[float] = field(default_factory=list)
    avg_loss: float = float("nan")
    saved: List[Path] = field(default_factory=list)
    best_map: Optional[float] = None
    images_per_s: float = 0.0


# ------------------------------------------------------------------------------------- model side
class LossModule(nn.Module):
    """``forward(x, targets) -> (loss, cost)``: ``Darknet.loss`` behind ``forward`` so DDP's
    gradient hooks (which fire on ``forward``) see it."""

    def __init__(self, model: "Darknet"):
        super().__init__()
        self.model: Any = model

    def forward(self, x: Tensor, targets: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
        if not hasattr(self.model, "loss"):
            raise DarkcfgError("this darkcfg has no Darknet.loss (training support missing)")
        res = self.model.loss(x, targets)
        cost = res.cost if isinstance(res.cost, Tensor) else torch.tensor(float(res.cost))
        return res.loss, cost.detach()


def accumulate_gradients(loss_module: Any, minibatches: Iterable[Tuple[Tensor, Sequence[Tensor]]],
                         device: torch.device, world: int = 1, scaler: Optional[Any] = None,
                         autocast: Optional[Callable[[], Any]] = None, model: Any = None,
                         seen: Optional[int] = None) -> Tuple[float, int]:
    """Forward/backward every mini-batch, summing gradients; ``(sum of costs, images)``.

    Under DDP the gradient all-reduce runs only on the last mini-batch (``no_sync``) and
    the loss is multiplied by ``world`` so the average DDP takes is the batch SUM.
    With ``model`` and ``seen`` (images before this iteration), ``model.seen`` is set so that
    during mini-batch k the loss sees Darknet's count, ``seen + (k+1) * global mini-batch``
    (``Darknet.loss`` adds this process's share itself).
    """
    minibatches = list(minibatches)
    total_cost, images = 0.0, 0
    for k, (x, targets) in enumerate(minibatches):
        last = k == len(minibatches) - 1
        sync = contextlib.nullcontext() if last or not hasattr(loss_module, "no_sync") else loss_module.no_sync()
        x = x.to(device, non_blocking=True)
        targets = [t.to(device) for t in targets]
        if model is not None and seen is not None:
            model.seen = seen + (k + 1) * x.shape[0] * world - x.shape[0]
        with sync:
            with (autocast() if autocast else contextlib.nullcontext()):
                loss, cost = loss_module(x, targets)
            loss = loss.float() * world
            (scaler.scale(loss) if scaler is not None else loss).backward()
        total_cost += float(cost) * x.shape[0]
        images += x.shape[0]
    return total_cost, images


# ------------------------------------------------------------------------------------------ set-up
def load_initial_weights(model: "Darknet", path: "str | os.PathLike") -> int:
    """Load ``path`` (full or a partial ``.conv.N`` file); returns the header's ``seen``.

    Darknet's training start reads as many layers as the file holds; here a file that ends
    exactly at a layer boundary is loaded up to that layer (anything else is an error).
    """
    try:
        model.load_weights(path)
        return parse_header(model.header or b"", str(path)).seen
    except WeightsError as exc:
        if "file ends inside layer" not in str(exc):
            raise
        from ..weights import iter_slots
        data = Path(path).read_bytes()
        hdr = parse_header(data, str(path))
        floats = (len(data) - hdr.size) // 4
        total, upto = 0, 0
        for slot in iter_slots(model, hdr):
            if total + slot.count > floats:
                break
            total += slot.count
            upto = slot.spec.index + 1
        if total != floats or upto == 0:
            raise
        model.load_weights(path, upto=upto)  # type: ignore[operator]
        warnings.warn(f"{path}: partial weights, layers 0..{upto - 1} loaded (the rest keep their initialisation)",
                      stacklevel=2)
        return hdr.seen


def _settings(opts: TrainOptions, cfg) -> TrainSettings:
    s = read_train_settings(cfg)
    if opts.batch is not None:
        s.batch = opts.batch
    if opts.subdivisions is not None:
        s.subdivisions = opts.subdivisions
    if opts.max_batches is not None:
        s.max_batches = opts.max_batches
    if s.batch % s.subdivisions:
        raise DarkcfgError(f"batch {s.batch} is not a multiple of subdivisions {s.subdivisions}")
    if s.max_batches <= 0:
        raise DarkcfgError(f"{cfg.path}: [net] max_batches must be > 0 to train (or pass --max-batches)")
    return s


def _use_amp(opts: TrainOptions, device: torch.device) -> bool:
    if opts.amp == "auto":
        return device.type == "cuda"
    return opts.amp == "on"


# ---------------------------------------------------------------------------------------- progress
class TrainProgress:
    """One status line: iteration, loss, average loss, lr, images/s, ETA, network size."""

    def __init__(self, max_batches: int, enabled: Optional[bool], stream=None):
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if enabled is None else enabled
        self.max_batches = max_batches
        self.last_print = 0.0
        self.rate: Optional[float] = None  # images/s, exponential average

    def update(self, iteration: int, loss: float, avg: float, lr: float, images: int, seconds: float,
               size: Tuple[int, int], batch: int) -> str:
        r = images / max(seconds, 1e-9)
        self.rate = r if self.rate is None else 0.9 * self.rate + 0.1 * r
        eta = (self.max_batches - iteration) * batch / max(self.rate, 1e-9)
        h, m = divmod(int(eta) // 60, 60)
        line = (f"{iteration}/{self.max_batches}: loss {loss:.4f}, avg {avg:.4f}, lr {lr:.6g}, "
                f"{self.rate:.1f} img/s, ETA {h}h{m:02d}m, {size[0]}x{size[1]}")
        now = time.monotonic()
        if self.live:
            self.stream.write("\r" + line + "\033[K")
            self.stream.flush()
        elif now - self.last_print >= 10 or iteration == self.max_batches:
            self.stream.write(line + "\n")
            self.stream.flush()
            self.last_print = now
        return line

    def message(self, text: str) -> None:
        self.stream.write(("\n" if self.live else "") + text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.live:
            self.stream.write("\n")


def _evaluator() -> Callable[..., Any]:
    import darkcfg

    fn = getattr(darkcfg, "evaluate", None)
    if fn is None:
        raise DarkcfgError("--map needs darkcfg.evaluate (the mAP evaluator), which this build lacks")
    return fn


def _data_int(data: DataFile, key: str, default: int) -> int:
    value = data.options.get(key)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise DarkcfgError(f"{data.path}: '{key}' expects an integer, got '{value}'") from None


def _map_value(result: Any) -> float:
    for key in ("map", "mAP", "map50"):
        if isinstance(result, dict) and key in result:
            return float(result[key])
        if hasattr(result, key):
            return float(getattr(result, key))
    return float(result)


# -------------------------------------------------------------------------------------------- loop
def train(opts: TrainOptions, log: Optional[Callable[[str], None]] = None) -> TrainResult:
    """Train ``opts.cfg`` on ``opts.data``; see the module docstring.  Returns a summary."""
    info = init_distributed(opts.device)
    try:
        return _train(opts, info)
    finally:
        shutdown(info)


def _train(opts: TrainOptions, info: DistInfo) -> TrainResult:
    from ..model import Darknet

    data = parse_data_file(opts.data)
    if data.train is None:
        raise DarkcfgError(f"{data.path}: no 'train=' image list")
    images = list_images(data.train)
    cfg = read_cfg(opts.cfg)
    s = _settings(opts, cfg)
    if data.classes and s.classes and data.classes != s.classes:
        raise DarkcfgError(f"{data.path}: classes={data.classes} but the cfg's detection layers have "
                           f"classes={s.classes}")
    graph = build_graph(cfg)
    model = Darknet(graph)
    seen = 0
    if opts.weights:
        seen = load_initial_weights(model, opts.weights)
    if opts.clear:
        seen = 0
    iteration = seen // s.batch
    seen = iteration * s.batch
    model.seen = seen
    device = info.device
    model.to(device).train()
    if opts.sync_bn:
        if device.type != "cuda":
            raise DarkcfgError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm runs on GPUs only)")
        try:
            convert_sync_batchnorm(model)
        except ValueError as exc:
            raise DarkcfgError(f"{opts.cfg}: {exc}") from None
    loss_module: nn.Module = LossModule(model)
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        loss_module = DDP(loss_module, device_ids=[device.index] if device.type == "cuda" else None,
                          find_unused_parameters=opts.find_unused)
    optimizer: DarknetSGD = make_optimizer(model, s.momentum, s.decay, s.batch)
    amp = _use_amp(opts, device)
    scaler = torch.amp.GradScaler(device.type) if amp and device.type == "cuda" else None
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp else None

    out_dir = Path(opts.out) if opts.out else (data.backup or Path("backup"))
    ckpt = Checkpoints(out_dir, Path(opts.cfg).stem, s.max_batches, _data_int(data, "saveweights", 0) or None,
                       _data_int(data, "savelast", 100))
    if info.main:
        ckpt.prepare()
        if iteration == 0:
            ckpt.check_fresh_start(opts.overwrite)
    evaluate = _evaluator() if opts.map else None

    dataset = DetectionDataset(images, s, augment=opts.augment)
    plan = BatchPlan(len(images), s, graph.net.width, graph.net.height, iteration, opts.seed, info.rank, info.world,
                     opts.sampling)
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_sampler=plan, num_workers=opts.workers, collate_fn=collate,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    batches = iter(loader)
    progress = TrainProgress(s.max_batches, opts.progress if info.main else False)
    result = TrainResult(iterations=iteration, seen=seen)
    map_every = max(4 * len(images) // s.batch, 100)
    run_start = time.perf_counter()
    start_iteration = iteration
    try:
        iteration, seen, avg_loss, best_map = _iterate(
            s, info, model, loss_module, optimizer, scaler, autocast, batches, progress, result, ckpt, evaluate,
            data, iteration, seen, map_every)
    except KeyboardInterrupt:
        done = start_iteration + len(result.losses)  # completed updates: the weights are theirs
        if info.main and done > start_iteration:
            path = ckpt.save(model, "last", done * s.batch)
            progress.message(f"interrupted at iteration {done}: saved {path} (resume with it as WEIGHTS)")
        raise
    if info.main:
        result.saved.append(ckpt.save(model, "final", seen))
    progress.close()
    barrier(info)
    result.iterations, result.seen, result.avg_loss = iteration, seen, avg_loss
    result.best_map = best_map if best_map >= 0 else None
    result.images_per_s = len(result.losses) * s.batch / max(time.perf_counter() - run_start, 1e-9)
    return result


def _iterate(s: TrainSettings, info: DistInfo, model: Any, loss_module: nn.Module, optimizer: DarknetSGD,
             scaler: Any, autocast: Any, batches: Any, progress: TrainProgress, result: TrainResult,
             ckpt: Checkpoints, evaluate: Any, data: DataFile, iteration: int, seen: int,
             map_every: int) -> Tuple[int, int, float, float]:
    """The iterations from ``iteration`` to ``max_batches``; returns (iteration, seen, avg loss, best mAP)."""
    avg_loss = -1.0
    last_saved = last_saved_last = iter_map = iteration
    best_map = -1.0
    while iteration < s.max_batches:
        t0 = time.perf_counter()
        minibatches = [next(batches) for _ in range(s.subdivisions)]
        size = (minibatches[0][0].shape[3], minibatches[0][0].shape[2])
        seen_before = seen
        cost, n = accumulate_gradients(loss_module, minibatches, info.device, info.world, scaler, autocast,
                                       model, seen_before)
        iteration += 1
        seen = seen_before + s.batch
        model.seen = seen
        rate = learning_rate(s, iteration)
        if scaler is not None:
            scaler.step(optimizer, lr=rate, batch=s.batch)
            scaler.update()
        else:
            optimizer.step(lr=rate, batch=s.batch)
        optimizer.zero_grad(set_to_none=True)
        loss = all_reduce_sum(cost, info) / s.batch
        if not math.isfinite(loss) and info.main:
            progress.message(f"warning: loss is {loss} at iteration {iteration}")
        if avg_loss < 0 or avg_loss != avg_loss:
            avg_loss = loss
        avg_loss = avg_loss * 0.9 + loss * 0.1
        result.losses.append(loss)
        result.rates.append(rate)
        dt = time.perf_counter() - t0
        if info.main:
            progress.update(iteration, loss, avg_loss, rate, s.batch, dt, size, s.batch)
        if evaluate is not None and (iteration >= max(iter_map + map_every, s.burn_in) or iteration == s.max_batches):
            iter_map = iteration
            if info.main:
                model.eval()
                value = _map_value(evaluate(model, data.path, progress=False))
                model.train()
                progress.message(f"mAP@0.5 = {value:.4f} at iteration {iteration} (best {max(best_map, value):.4f})")
                if value >= best_map:
                    best_map = value
                    result.saved.append(ckpt.save(model, "best", seen))
            barrier(info)
        if info.main and ckpt.due(iteration, last_saved):
            last_saved = iteration
            result.saved.append(ckpt.save(model, iteration, seen))
        if info.main and ckpt.last_due(iteration, last_saved_last):
            last_saved_last = iteration
            result.saved.append(ckpt.save(model, "last", seen))
    return iteration, seen, avg_loss, best_map
