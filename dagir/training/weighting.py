"""Task-loss weighting: how the per-task losses w_t·L_t become the one loss a step minimises.

`sum` (the default) adds them. The others are TorchJD's scalarizers (`torchjd.scalarization`, a
maintained library of multi-task aggregators), not copies of our own:
- `uw`: uncertainty weighting (Kendall et al., CVPR 2018), Σ_t ½e^{-s_t}·L_t + ½s_t with a
  learned log-variance s_t per task, stepped by its own Adam at `lr` after every training step;
- `dwa`: dynamic weight average (Liu et al., CVPR 2019), weights from the ratio of each task's
  mean loss over the two previous epochs at `temperature`, rolled at the end of every epoch.

One `LossWeighting` serves a whole run (every stage, every method of a bench alike), and its
state goes into the checkpoint, so a resumed run weighs exactly as an uninterrupted one.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import Tensor

from ..spec import LossWeightingSpec
from .distributed import World

if TYPE_CHECKING:
    from .precision import Precision

WEIGHTINGS: tuple[str, ...] = ("sum", "uw", "dwa")


class LossWeighting:
    """A scalarizer of the stacked task losses, with what it needs between steps and epochs."""

    def __init__(self, spec: LossWeightingSpec, tasks: int, device: torch.device | str = "cpu",
                 world: World = World()) -> None:
        from torchjd.scalarization import DWA, UW

        self.kind, self.world = spec.kind, world
        self.scalarizer = (UW(tasks) if spec.kind == "uw" else DWA(temperature=spec.temperature)).to(device)
        parameters = list(self.scalarizer.parameters())
        self.optimizer = torch.optim.Adam(parameters, lr=spec.lr) if parameters else None

    def __call__(self, losses: Tensor) -> Tensor:
        return self.scalarizer(losses)

    def after_step(self, precision: "Precision") -> None:
        """Step the scalarizer's own parameters (UW's log-variances) with the gradient the step left
        (through the run's `Precision`, which unscales float16 gradients)."""
        if self.optimizer is not None:
            precision.step(self.optimizer)
            self.optimizer.zero_grad(set_to_none=True)

    def end_epoch(self) -> None:
        if self.kind == "dwa":
            losses = self.scalarizer._loss_sum  # this rank's; every rank weighs by the epoch's mean over ranks
            if self.world.distributed and losses is not None:
                self.scalarizer._loss_sum = self.world.sum_(losses.detach().clone()) / self.world.size
            self.scalarizer.step()

    def weights(self) -> list[float]:
        """The weight each task's loss has now (UW: ½e^{-s_t}), for the record."""
        if self.kind == "uw":
            return (0.5 * torch.exp(-self.scalarizer.log_var.detach())).tolist()
        return []

    # DWA keeps its epoch averages in plain attributes; they are saved by name, and a resume test
    # checks that a resumed run weighs exactly as an uninterrupted one.
    DWA_STATE = ("_loss_sum", "_n_batches", "_previous_averages")

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"module": self.scalarizer.state_dict()}
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        if self.kind == "dwa":
            state["dwa"] = {name: getattr(self.scalarizer, name) for name in self.DWA_STATE}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.scalarizer.load_state_dict(state["module"])
        if self.optimizer is not None and "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        for name, value in state.get("dwa", {}).items():
            setattr(self.scalarizer, name, value)


def make_weighting(spec: LossWeightingSpec, tasks: int, device: torch.device | str = "cpu",
                   world: World = World()) -> LossWeighting | None:
    """The run's weighting, or None for the plain sum."""
    return None if spec.kind == "sum" else LossWeighting(spec, tasks, device, world)
