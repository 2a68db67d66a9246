"""One run on several processes (`torchrun --nproc_per_node=N -m dagir run SPEC -o OUT`; DESIGN §12).

Data parallel: every rank holds the whole model and takes its share of each global batch (rows
`rank::size` of the `data.batch_size` rows the 1-process run would take), so the global batch is
the spec's whatever the world size. Gradients are averaged over ranks at the one place every
optimiser step passes, `Precision.step`, before the step: one flattened all-reduce per optimiser.

Why not `DistributedDataParallel`'s wrapper: a search step runs several backward passes and steps
several optimisers per batch (the gradient strategy one backward for two optimisers, REINFORCE two
backwards), gated-off edges leave parameters without a gradient, and the compact network is a new
module after the post-search passes. Averaging at the step handles all of these the same way (a
missing gradient counts as zero on that rank) with no `find_unused_parameters` and no re-wrapping;
it gives up DDP's overlap of communication with the backward pass.

What else keeps the ranks identical: the same seed and initial weights (broadcast from rank 0
anyway), the same sampled decisions (REINFORCE draws from a generator seeded by step), the reward
averaged over ranks, batch-norm statistics averaged before every evaluation and checkpoint, and the
training loss, DWA's epoch losses and every validation and test metric reduced over ranks
(evaluation is sharded too). Rank 0 alone writes OUT and shows progress; the other ranks write
into a scratch folder that is discarded. On CPU the backend is gloo, on CUDA nccl.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn

from ..errors import UserError


@dataclass(frozen=True)
class World:
    """This process's place among a run's processes (rank 0 of 1 for an ordinary run)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, rows):
        """This rank's rows of a batch (every `size`-th, from `rank`)."""
        return rows[self.rank::self.size] if self.distributed else rows

    @property
    def batch_shard(self):
        """What `EpochBatches` takes as `shard`: `shard` under torchrun, None (whole batches) alone."""
        return self.shard if self.distributed else None

    # -- collectives (no-ops in a 1-process run) -----------------------------------------------
    def average_gradients(self, parameters: Iterable[nn.Parameter]) -> None:
        """Average every parameter's gradient over ranks (one flattened all-reduce). A rank without
        a gradient for a parameter contributes zeros; a parameter no rank has a gradient for keeps
        none, as it would in a 1-process run (so the optimiser skips it there too)."""
        if not self.distributed:
            return
        params = [p for p in parameters if p.requires_grad]
        if not params:
            return
        dtype = params[0].dtype
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        has = torch.tensor([p.grad is not None for p in params], dtype=dtype, device=params[0].device)
        flat = torch.cat([*(g.reshape(-1).to(dtype) for g in grads), has])
        dist.all_reduce(flat)
        offset = 0
        for parameter, grad, seen in zip(params, grads, flat[-len(params):].tolist()):
            size = grad.numel()
            parameter.grad = (flat[offset:offset + size] / self.size).view_as(grad).to(grad.dtype) if seen else None
            offset += size

    def mean(self, value: float) -> float:
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.size

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over ranks, in place (and returned)."""
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor

    def broadcast_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank."""
        if self.distributed:
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def average_buffers(self, module: nn.Module) -> None:
        """Batch-norm running statistics (every floating buffer) averaged over ranks, so every rank
        evaluates, and rank 0 saves, the same model."""
        if self.distributed:
            for buffer in module.buffers():
                if buffer.is_floating_point():
                    dist.all_reduce(buffer.data)
                    buffer.data /= self.size

    def agree(self, check: Callable[[], None] | None) -> None:
        """Rank 0 runs `check`; if it raises a `UserError`, every rank raises it (so no rank waits
        for one that stopped). Other ranks pass None and wait for rank 0's outcome."""
        failure = None
        if self.main and check is not None:
            try:
                check()
            except UserError as error:
                failure = str(error)
        if self.distributed:
            failure = self._broadcast_text(failure)
        if failure is not None:
            raise UserError(failure)

    def _broadcast_text(self, text: str | None) -> str | None:
        """Rank 0's `text` (or None) on every rank, as UTF-8 bytes in tensors (no pickle)."""
        data = (text or "").encode()
        length = torch.tensor([len(data) if text is not None else -1])
        dist.broadcast(length, src=0)
        if int(length) < 0:
            return None
        buffer = (torch.tensor(list(data), dtype=torch.uint8) if self.main
                  else torch.empty(int(length), dtype=torch.uint8))
        dist.broadcast(buffer, src=0)
        return bytes(buffer.tolist()).decode()


def join_world(device_choice: str = "auto") -> World:
    """The world torchrun started this process in (its environment variables), with the process
    group initialised; an ordinary process is rank 0 of 1 and initialises nothing."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = device_choice != "cpu" and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return World(rank, size, local_rank)


def leave_world(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def scratch_folder(world: World) -> str:
    """Where a rank other than 0 writes what rank 0 writes into OUT (discarded at exit)."""
    return tempfile.mkdtemp(prefix=f"dagir-rank{world.rank}-")
