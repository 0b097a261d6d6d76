r"""Data-parallel training over processes: torch.distributed, started by ``torchrun``.

``torchrun --nproc_per_node=N -m clusterclr train ...`` starts N processes;
each sets up the process group from torchrun's environment (gloo for CPU
tensors, NCCL for CUDA tensors), trains a copy of the method wrapped in
DistributedDataParallel on its share of every batch, and rank 0 alone
writes logs, checkpoints and reports. Without torchrun (or with one
process) every function here is the identity and nothing changes.

``optim.batch_size`` stays the *global* batch: every rank draws the same
epoch order (same seed) and takes its own contiguous slice of each batch,
so an epoch covers exactly the images a one-process epoch does.

The rule the methods follow. DDP averages the ranks' gradients, so the loss
:math:`L_r` a rank returns must satisfy :math:`\frac1W\sum_r L_r = L`, the
loss of the whole global batch. A mean over the rank's own anchors, each
contrasted with candidates from every rank (:func:`gather`), satisfies it;
so does a loss every rank computes identically on gathered tensors (CC's
cluster columns). :func:`gather` keeps the gradient: its backward sums the
gradient of every rank's loss with respect to this rank's rows, which is
what the averaged gradient of :math:`L` needs.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from clusterclr.errors import UserError

# Rank 0 evaluates and writes checkpoints while the others wait at their next collective.
TIMEOUT = timedelta(hours=2)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    # Outside the process group (before joining it, or after leaving), torchrun's RANK still says who we are.
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


@contextmanager
def process_group() -> Iterator[None]:
    """Join torchrun's process group for the duration (a no-op when not started by torchrun)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT)
    if not is_main():
        warnings.simplefilter("ignore")  # rank 0 says it once
    try:
        yield
        # Rank 0 still evaluates and writes after the others are done: leave the group together.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def check_batch(batch_size: int) -> int:
    """This rank's share of a global batch of ``batch_size``."""
    size = world_size()
    if batch_size % size:
        raise UserError(f"optim.batch_size={batch_size} does not split evenly over {size} processes; use a multiple of {size}")
    return batch_size // size


def local_part(global_batch: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (of indices, images, ...)."""
    n = len(global_batch) // world_size()
    return global_batch[rank() * n : (rank() + 1) * n]


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every rank's loss may depend on this rank's rows: sum those gradients, keep this rank's.
        grad = grad.contiguous()
        dist.all_reduce(grad)
        n = len(grad) // dist.get_world_size()
        return grad[dist.get_rank() * n : (dist.get_rank() + 1) * n]


def gather(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` (equal shapes), concatenated in rank order along dim 0; gradients flow back to each rank."""
    return _Gather.apply(x) if world_size() > 1 else x


def gather_views(z: torch.Tensor, num_views: int) -> torch.Tensor:
    """View-major embeddings of the local batch (V·n × D) -> those of the global batch (V·W·n × D), view-major.

    Row ``v·G + i`` is view ``v`` of global image ``i``, images in rank
    order: the layout one process would have for the whole batch.
    """
    if world_size() == 1:
        return z
    per_image = z.unflatten(0, (num_views, -1)).transpose(0, 1)  # n × V × D
    return gather(per_image).transpose(0, 1).flatten(0, 1)


def local_view_rows(num_images: int, num_views: int, device: torch.device) -> torch.Tensor:
    """The rows of :func:`gather_views`' output that hold this rank's views (V·n, view-major)."""
    total = num_images * world_size()
    starts = torch.arange(num_views, device=device)[:, None] * total + rank() * num_images
    return (starts + torch.arange(num_images, device=device)[None, :]).flatten()


@torch.no_grad()
def all_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over ranks (a copy; no gradient)."""
    if world_size() == 1:
        return x
    total = x.detach().clone()
    dist.all_reduce(total)
    return total


def global_mean_share(local_sum: torch.Tensor, local_count: torch.Tensor) -> torch.Tensor:
    """This rank's loss for a mean over terms spread across ranks: W · local sum / global count.

    Averaged over ranks (as DDP averages gradients) it is the global mean.
    """
    return local_sum * world_size() / all_sum(local_count.float()).clamp(min=1)


@torch.no_grad()
def broadcast(*tensors: torch.Tensor) -> None:
    """Overwrite ``tensors`` on every rank with rank 0's, in place."""
    if world_size() == 1:
        return
    for tensor in tensors:
        dist.broadcast(tensor, src=0)


def broadcast_state(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank: after work that must leave all ranks identical."""
    broadcast(*(value for value in module.state_dict().values() if isinstance(value, torch.Tensor)))


def _batch_norms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]


def _running_statistics(module: nn.Module) -> list[torch.Tensor]:
    return [stat for m in _batch_norms(module) for stat in (m.running_mean, m.running_var, m.num_batches_tracked)]


def batch_norm_statistics(module: nn.Module) -> list[torch.Tensor]:
    """This rank's running statistics, on the CPU: between epochs' averaging they differ by rank."""
    return [stat.detach().cpu().clone() for stat in _running_statistics(module)]


@torch.no_grad()
def load_batch_norm_statistics(module: nn.Module, statistics: list[torch.Tensor]) -> None:
    stats = _running_statistics(module)
    if len(stats) != len(statistics):
        raise ValueError(f"{len(statistics)} batch-norm statistics for {len(stats)} buffers")
    for stat, saved in zip(stats, statistics):
        stat.copy_(saved)


@torch.no_grad()
def average_batch_norm_statistics(module: nn.Module) -> None:
    """Average the running statistics of every batch norm over ranks (without SyncBatchNorm they drift apart)."""
    if world_size() == 1:
        return
    for m in _batch_norms(module):
        for stat in (m.running_mean, m.running_var):
            dist.all_reduce(stat)
            stat.div_(world_size())


def wrap(method: nn.Module, device: torch.device, sync_batch_norm: bool, idle_parameters: bool) -> nn.Module:
    """``method`` in DistributedDataParallel (itself in a one-process run).

    Buffers are not broadcast at every step: queues, banks and partner
    tables stay identical because every rank writes the same gathered keys,
    and batch-norm statistics are averaged at epoch ends
    (:func:`average_batch_norm_statistics`).
    """
    if world_size() == 1:
        return method
    if sync_batch_norm:
        if device.type != "cuda":
            raise UserError("train.sync_batch_norm needs CUDA devices (torch's SyncBatchNorm does not run on the CPU); drop it")
        nn.SyncBatchNorm.convert_sync_batchnorm(method)
    ddp = nn.parallel.DistributedDataParallel
    # Newer torch names broadcast_buffers=False forward_sync_buffers=False (buffers still agree at construction).
    no_buffer_sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters else "broadcast_buffers"
    return ddp(
        method,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=idle_parameters,
        **{no_buffer_sync: False},
    )


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on some rank (so all ranks stop at the same step)."""
    if world_size() == 1:
        return flag
    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value)


def shard(num_rows: int) -> tuple[int, int]:
    """This rank's contiguous [start, end) of ``num_rows`` rows; shard sizes differ by at most one."""
    size, r = world_size(), rank()
    return r * num_rows // size, (r + 1) * num_rows // size


def gather_shards(local: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Every rank's :func:`shard` of a ``num_rows``-row tensor, put together in order (no gradient)."""
    if world_size() == 1:
        return local
    size = world_size()
    longest = -(-num_rows // size)
    padded = torch.zeros(longest, *local.shape[1:], dtype=local.dtype, device=local.device)
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    lengths = [(r + 1) * num_rows // size - r * num_rows // size for r in range(size)]
    return torch.cat([part[:length] for part, length in zip(parts, lengths)])


def on_main_then_broadcast(compute, *args, **kwargs):
    """``compute(*args, **kwargs)`` on rank 0 only, its (picklable) result sent to every rank."""
    if world_size() == 1:
        return compute(*args, **kwargs)
    payload = [compute(*args, **kwargs) if is_main() else None]
    dist.broadcast_object_list(payload, src=0)
    return payload[0]


def gather_objects(value):
    """Every rank's ``value``, as a list in rank order."""
    if world_size() == 1:
        return [value]
    values = [None] * world_size()
    dist.all_gather_object(values, value)
    return values
