"""How a run computes (`train.precision`): float32 or float64 weights; bfloat16 or float16
autocast, in training and evaluation alike; and for float16 torch's gradient scaler, so small
gradients survive the narrow range: a step whose gradients overflow is skipped (the scale halves)
and counted, not a crash.

Every training step goes through one `Precision`: `backward(loss)`, `step(optimizer)` for each
optimiser it steps, then `update()` once (the stage runner calls it). With float32 the scaler is
off and each call is the plain one, so results are unchanged. `train.channels_last` puts image
batches and conv weights in channels-last order (`inputs`, `model`), which some conv kernels run
faster on. In a run on several processes, `step` first averages the optimiser's gradients over the
ranks (`World.average_gradients`).
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Mapping

import torch

from .distributed import World

AUTOCAST = {"bfloat16": torch.bfloat16, "float16": torch.float16}


class Precision:
    def __init__(self, precision: str = "float32", device: torch.device | str = "cpu", world: World = World(),
                 channels_last: bool = False) -> None:
        self.name, self.world = precision, world
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.device_type = torch.device(device).type
        self.dtype = torch.float64 if precision == "float64" else torch.float32  # the weights'
        self.autocast_dtype = AUTOCAST.get(precision)
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=precision == "float16")
        self.skipped = 0  # steps whose gradients overflowed in float16, skipped

    def inputs(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch as the model takes it: the weights' dtype, and channels-last for images if asked."""
        batch = batch.to(self.dtype)
        return batch.contiguous(memory_format=self.memory_format) if batch.dim() == 4 else batch

    def model(self, module: torch.nn.Module) -> torch.nn.Module:
        """`module` in the run's memory format (conv weights channels-last if asked), in place."""
        return module.to(memory_format=self.memory_format) if self.memory_format is torch.channels_last else module

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device_type, dtype=self.autocast_dtype or torch.bfloat16,
                              enabled=self.autocast_dtype is not None)

    def backward(self, loss: torch.Tensor, retain_graph: bool = False) -> None:
        self.scaler.scale(loss).backward(retain_graph=retain_graph)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        self.world.average_gradients(p for g in optimizer.param_groups for p in g["params"])
        if self.scaler.is_enabled() and not any(p.grad is not None for g in optimizer.param_groups for p in g["params"]):
            return  # nothing to step (the scaler refuses an optimiser with no gradients)
        self.scaler.step(optimizer)

    def update(self) -> None:
        """After each training step: the scaler adapts; a lowered scale means the step was skipped."""
        if self.scaler.is_enabled():
            before = self.scaler.get_scale()
            self.scaler.update()
            if self.scaler.get_scale() < before:
                self.skipped += 1

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict(), "skipped": self.skipped}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.skipped = int(state.get("skipped", 0))
