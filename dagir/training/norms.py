"""Batch norm's statistics around the search: which a step normalises with, and which an evaluation
of the discretised supernet sees.

- `running_norm_statistics`: inside the block, batch norms in training mode normalise with their
  running statistics (`train.search.arch_norm: running`, the alternating architecture step).
- `recalibrated_norms`: inside the block, batch norms hold statistics re-estimated on a few
  training batches as the network computes now (`train.search.select_norm_batches`): the running
  statistics the search gathered come from the relaxed supernet, or from the warm-up's with frozen
  Θ, not from the discretised network a `select: best` scores.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from ..datasets.splits import Split
from .loop import epoch_batches


def batch_norms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every batch norm in `module` that keeps running statistics."""
    return [child for child in module.modules()
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and child.track_running_stats]


@contextmanager
def running_norm_statistics(module: nn.Module, running: bool = True) -> Iterator[None]:
    """Inside the block, `module`'s batch norms in training mode normalise with their running
    statistics (and leave them as they are); with `running` false, nothing changes."""
    norms = [norm for norm in batch_norms(module) if running and norm.training]
    for norm in norms:
        norm.eval()
    try:
        yield
    finally:
        for norm in norms:
            norm.train()


@contextmanager
def recalibrated_norms(module: nn.Module, forward: Callable[[Tensor], object], split: Split, *, batches: int,
                       batch_size: int, seed: int, device: torch.device) -> Iterator[None]:
    """Inside the block, `module`'s batch norms hold statistics estimated afresh (a plain average,
    not a moving one) over `batches` shuffled batches of `split` (an order fixed by `seed`), each
    passed through `forward` as the module computes now; afterwards every statistic, momentum and
    mode is as it was, so training goes on untouched. With `batches` 0, nothing changes."""
    norms = batch_norms(module) if batches > 0 else []
    if not norms:
        yield
        return
    saved = [(norm.momentum, {name: buffer.clone() for name, buffer in norm.named_buffers()}) for norm in norms]
    modes = [(child, child.training) for child in module.modules()]
    module.eval()  # everything else (gates, dropout) computes as in evaluation
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the calibration batches
        norm.train()
    try:
        with torch.no_grad():
            loaded = epoch_batches(split, batch_size, seed)
            for index in range(min(batches, len(loaded))):
                forward(loaded[index][0].to(device))
        for norm in norms:
            norm.eval()
        yield
    finally:
        for norm, (momentum, buffers) in zip(norms, saved):
            with torch.no_grad():
                for name, buffer in norm.named_buffers():
                    buffer.copy_(buffers[name])
            norm.momentum = momentum
        for child, training in modes:
            child.training = training
