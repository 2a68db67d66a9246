"""How a training step turns its task losses into the weights' gradients (`train.loss_weighting.aggregator`).

`none` (the default): back-propagate the one combined loss, Σ_t λ_t·w_t·L_t, where λ_t is the loss
weighting's factor (1 for `sum`, DWA's weight). Any other name is Jacobian descent (Quinton & Rey,
2024) with one of TorchJD's aggregators (`torchjd.aggregation`, a maintained library, not our copy):
the Jacobian of the task terms λ_t·w_t·L_t with respect to the weights the step trains, one row per
task, is combined into one update by the aggregator, e.g. UPGrad, which projects each task's row onto
the cone of directions that conflict with no task and averages them, so no task's loss rises to first
order. Everything else a step minimises (the squeeze and the other architecture terms) does not
depend on the weights: where a step trains the gates too, they get the combined loss's gradient.

In a run on several processes each rank aggregates its own Jacobian, and `Precision.step` averages
the aggregated gradients over the ranks.
"""
from __future__ import annotations

from importlib import import_module
from typing import Sequence

import torch
from torch import Tensor

from .precision import Precision

# the spec's names for TorchJD's aggregators that need no solver beyond quadprog
AGGREGATORS: dict[str, str] = {"upgrad": "UPGrad", "dualproj": "DualProj", "mgda": "MGDA", "pcgrad": "PCGrad",
                               "imtl_g": "IMTLG", "aligned_mtl": "AlignedMTL"}


def stepped_by(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """The parameters `optimizer` steps: those a weight step's gradients are for."""
    return [p for group in optimizer.param_groups for p in group["params"]]


class Descent:
    """One run's way from task losses to gradients; `backward` replaces `precision.backward(loss)`."""

    def __init__(self, aggregator: str, precision: Precision) -> None:
        self.precision = precision
        self.aggregator = None
        if aggregator != "none":
            self.aggregator = getattr(import_module("torchjd.aggregation"), AGGREGATORS[aggregator])()

    def backward(self, loss: Tensor, terms: Sequence[Tensor], parameters: Sequence[Tensor], *,
                 others: bool = False) -> None:
        """Gradients for one step: of `loss` (the combined task losses, plus any term that does not
        depend on the weights), or, with an aggregator, the aggregated Jacobian of `terms` (each task's
        w_t·L_t, in the graph of `loss`) for `parameters`; `others`: leaves outside `parameters` (the
        gates) take `loss`'s gradient too."""
        trained = [p for p in parameters if p.requires_grad]
        if self.aggregator is None or not trained:
            self.precision.backward(loss)
            return
        from torchjd.autojac import backward, jac_to_grad

        factors = torch.autograd.grad(loss, list(terms), retain_graph=True)  # λ_t: d loss / d term, now
        if others:
            self.precision.backward(loss, retain_graph=True)
            for parameter in trained:
                parameter.grad = None
        rows = [factor.detach() * term for factor, term in zip(factors, terms)]
        backward(rows, inputs=trained)
        jac_to_grad(trained, self.aggregator)
