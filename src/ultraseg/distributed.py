"""Training on several processes with PyTorch DDP (DistributedDataParallel), started by torchrun.

A stage hands its work to :func:`run_stage`. With ``train.distributed`` asking for one process (the default) the work
runs in this process exactly as it did before DDP existed. Asked for more, the stage starts itself again under
torchrun (``python -m torch.distributed.run``) and waits; each worker joins a process group (gloo on the CPU, NCCL
on CUDA), trains on its share of every global batch, and only rank 0 logs, validates, and writes checkpoints,
resume files and dvclive curves.

Each epoch's global batches are those of the single-process run (:func:`shard`), DDP averages the ranks' gradients,
which is the gradient of the global batch's mean loss, and with ``sync_bn`` BatchNorm normalises with the global
batch's statistics too (:class:`GlobalBatchNorm` on the CPU, where PyTorch's SyncBatchNorm does not run). Two
processes therefore follow one process's loss curve up to floating-point summation order
(``tests/test_distributed.py`` states the tolerance).
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ultraseg.params import DistributedParams, ParamsError, TrainParams

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------------- this process


def is_worker() -> bool:
    """True in a process that torchrun started (it sets these variables for every worker)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0, the one process that logs and writes files (the only process when there is no process group)."""
    return rank() == 0


def local_world_size() -> int:
    """Training processes on this machine, which share its cores."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if dist.is_initialized() else 1


# ---------------------------------------------------------------------------------------------------- launching


def torchrun_options(cfg: DistributedParams) -> list[str]:
    """torchrun's options for ``cfg.nproc`` workers here, meeting the other ``cfg.nnodes - 1`` nodes at the
    rendezvous (``torchrun OPTIONS script.py ARGS`` on the command line)."""
    options = [f"--nproc_per_node={cfg.nproc}", f"--nnodes={cfg.nnodes}"]
    if cfg.rdzv_endpoint:
        options += ["--rdzv_backend=c10d", f"--rdzv_endpoint={cfg.rdzv_endpoint}", f"--rdzv_id={cfg.rdzv_id}"]
    else:  # one node: torchrun picks a free local port, so two stages or experiments never collide
        options.append("--standalone")
    return options


def launched(script: str | Path, argv: Sequence[str], cfg: DistributedParams) -> bool:
    """Run ``script argv`` under torchrun and wait for it, when ``cfg`` asks for several processes and this process
    is not already one of them. True when the workers did the work; a failure ends this process with one line.

    torchrun runs in this process (its API, as ``python -m torch.distributed.run`` would): torch is loaded already."""
    if cfg.world == 1 or is_worker():
        return False
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    # torchrun would otherwise set one OpenMP thread per worker, with a warning; configure_cpu shares the cores out
    threads = os.environ.get("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // cfg.nproc)))
    with _environ(OMP_NUM_THREADS=threads):
        args = get_args_parser().parse_args([*torchrun_options(cfg), str(script)])
        # set, not parsed: torchrun's parser would take a stage option for an abbreviation of its own (--run)
        args.training_script_args = list(argv)
        try:
            run(args)
        except ChildFailedError as err:  # the worker printed its own error; say which one failed first
            rank, failure = err.get_first_failure()
            sys.exit(f"error: training process {rank} of {cfg.world} failed (exit code {failure.exitcode}); "
                     "its message is above")
    return True


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """``os.environ`` with ``values`` set for the duration (the workers inherit it), then as it was."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def process_group(cfg: TrainParams) -> Iterator[None]:
    """In a torchrun worker: join the process group (and take this worker's GPU) for the duration; else nothing."""
    if not is_worker():
        yield
        return
    cuda = cfg.device != "cpu" and torch.cuda.is_available()
    if cuda:  # torch.device("cuda") then means this worker's GPU everywhere
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    backend = cfg.distributed.backend if cfg.distributed.backend != "auto" else "nccl" if cuda else "gloo"
    dist.init_process_group(backend)
    try:
        yield
        barrier()  # no worker leaves while rank 0 still writes the stage's outputs
    finally:
        dist.destroy_process_group()


def run_stage(script: str | Path, argv: Sequence[str] | None, cfg: TrainParams, work: Callable[[], T]) -> T | None:
    """Run a stage's ``work`` on the processes ``cfg.distributed`` asks for. Returns its result in the process that
    writes the stage's outputs (the only process, or rank 0), None in the others and in a launcher."""
    if launched(script, sys.argv[1:] if argv is None else argv, cfg.distributed):
        return None
    with process_group(cfg):
        result = work()
        return result if is_main() else None


# ---------------------------------------------------------------------------------------------------- training


def shard(order: Sequence[int], batch_size: int, rank: int, world: int) -> list[int]:
    """This rank's samples of an epoch in ``order``: every ``world``-th sample of the whole global batches, starting
    at its rank (as DistributedSampler shards), so that the ranks' k-th local batches together are exactly
    ``order``'s k-th global batch. One process gets the whole batches of ``order``."""
    whole = len(order) // batch_size * batch_size
    return list(order[:whole][rank::world])


def local_batch_size(batch_size: int) -> int:
    """Each process's share of the global batch ``train.batch_size``."""
    world = world_size()
    if batch_size % world:
        raise ParamsError(f"train.batch_size: {batch_size} does not split equally over {world} training processes")
    return batch_size // world


def parallel(model: nn.Module, cfg: DistributedParams, device: torch.device) -> nn.Module:
    """What the training step calls: ``model`` itself in one process; else DDP over it, or over a copy whose
    BatchNorm layers use the global batch's statistics (``sync_bn``; fit copies the weights back at its end)."""
    if world_size() == 1:
        return model
    if cfg.sync_bn:
        model = sync_batchnorm(copy.deepcopy(model), device)
    return DistributedDataParallel(model, device_ids=[torch.cuda.current_device()] if device.type == "cuda" else None)


def unwrap(net: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (its weights are what the optimiser steps and checkpoints hold)."""
    return net.module if isinstance(net, DistributedDataParallel) else net


def from_main(compute: Callable[[], T]) -> T:
    """``compute()`` run on rank 0 and sent to every rank, so that all take the same decision from it (validation
    scores, early stopping, the resume state). In one process simply ``compute()``."""
    if world_size() == 1:
        return compute()
    box = [compute() if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean(value: float) -> float:
    """The mean of ``value`` over the ranks; ``value`` itself in one process."""
    if world_size() == 1:
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    total = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return float(total) / world_size()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


# ---------------------------------------------------------------------------------------------------- BatchNorm


class _SumOverRanks(torch.autograd.Function):
    """The sum of a tensor over the ranks, differentiable: the gradient of a sum over ranks is the sum of the ranks'
    gradients (what torch.distributed.nn's deprecated all_reduce did)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _SumOverRanks.apply(grad)


class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d that normalises with the statistics of the global batch: the per-channel sums are all-reduced
    over the ranks by a differentiable all-reduce, so the gradients are those of one process holding the whole batch.
    PyTorch's SyncBatchNorm does the same on GPUs only; this is its CPU (gloo) counterpart. Two passes (mean, then
    the centred sum of squares), as the single-process kernel, rather than E[x^2] - E[x]^2, which cancels badly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        x = x.float()  # under bf16 autocast the statistics are taken, and kept, in fp32 as BatchNorm's own are
        count = x.numel() // x.shape[1] * world_size()
        batch_mean = _SumOverRanks.apply(x.sum((0, 2, 3))) / count
        centred = x - batch_mean[None, :, None, None]
        var = _SumOverRanks.apply((centred * centred).sum((0, 2, 3))) / count
        with torch.no_grad():  # the running statistics as BatchNorm keeps them: unbiased variance, momentum or average
            self.num_batches_tracked.add_(1)
            factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(batch_mean, factor)
            self.running_var.lerp_(var * count / (count - 1), factor)
        scale = self.weight * torch.rsqrt(var + self.eps)
        return centred * scale[None, :, None, None] + self.bias[None, :, None, None]


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with every BatchNorm2d normalising over the global batch: PyTorch's SyncBatchNorm on CUDA,
    :class:`GlobalBatchNorm` on the CPU (same state-dict keys, so checkpoints do not change)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.BatchNorm2d and child.affine and child.track_running_stats:
                synced = GlobalBatchNorm(child.num_features, child.eps, child.momentum)
                synced.load_state_dict(child.state_dict())
                setattr(parent, name, synced.to(child.weight.device))
    return model
