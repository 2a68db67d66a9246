"""Search strategies (DESIGN §9): how the search stage trains the architecture's decisions.

Each strategy is one file and one class with a `step(batch, epoch, index)` for the stage loop:
- `gradient` (`gradient.py`): relaxed decisions trained by back-propagation, `joint` (decisions
  and weights on the same batch) or `alternating` (an architecture step, then a weight step; on two
  disjoint splits of the training set when `train.search.split` holds a fraction out for the
  architecture, MTL-NAS's way; on alternate batches of one split otherwise);
- `reinforce` (`reinforce.py`): one sampled option per decision each step, the sampled network's
  weights trained by back-propagation, the logits by the policy gradient with a moving-average
  baseline (MTNAS).

A strategy gets a `SearchContext`: the supernet, what to train, the losses, and where its
architecture batches come from; the run (`dagir.run_job`) owns the data, the loop and the
checkpoints.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from ...spec import SearchStageSpec, SqueezeSpec, TaskSpec
from ..budget import SearchBudget
from ..descent import Descent
from ..loop import Batch, multitask_loss
from ..precision import Precision
from ..squeeze import squeeze_loss

Forward = Callable[[Tensor], Mapping[str, Tensor]]


def step_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator for one step's random draws (samples, Gumbel noise), fixed by (seed, epoch,
    step), so a resumed search draws exactly what an uninterrupted one would."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 100_003 + index) % (2 ** 62))


@contextmanager
def without_gradients(parameters: Iterable[nn.Parameter]) -> Iterator[None]:
    """`parameters` left out of autograd inside the block, so a step that applies only some
    gradients computes only those: an architecture step skips the weight gradients of every
    convolution (1.37x faster on the default example: `benchmarks/alternating_step.py`), a weight
    step the gates'."""
    frozen = [parameter for parameter in parameters if parameter.requires_grad]
    for parameter in frozen:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)


@dataclass
class SearchContext:
    """What a strategy works with. `arch_batch(epoch, index)` is the batch of the held-out split
    for the architecture step of that step, or None when the stage has one split. `squeeze_weight`
    is λ now (the run ramps it); `compactness()` the flow or cost squeeze's per-slot weights;
    `budget` the budget held inside the search (`search.budget.search_rate`), or None."""

    supernet: nn.Module
    stage: SearchStageSpec
    squeeze: SqueezeSpec
    tasks: Sequence[TaskSpec]
    forward: Forward
    weights: list[nn.Parameter]
    heads: list[nn.Parameter]
    seed: int
    arch_batch: Callable[[int, int], Batch | None] = lambda epoch, index: None
    compactness: Callable[[], Tensor | None] = lambda: None
    squeeze_weight: float = 0.0
    sharing_weight: float = 0.0
    optimizers: list[torch.optim.Optimizer] = field(default_factory=list)
    weighting: Callable[[Tensor], Tensor] | None = None
    precision: Precision = field(default_factory=Precision)
    budget: SearchBudget | None = None
    descent: Descent | None = None  # how the weights' gradients come from the task losses (None: their sum's)
    _pairs: tuple[Tensor, Tensor] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.descent is None:
            self.descent = Descent("none", self.precision)

    def task_losses(self, batch: Batch, *, weighted: bool = True) -> tuple[Tensor, list[Tensor]]:
        """The task losses of `batch` combined by the run's weighting (`weighted`), or their plain
        weighted sum (a reward, which should not move the weighting's statistics); and each task's
        term w_t·L_t."""
        inputs, targets = batch
        return multitask_loss(self.forward(inputs), targets, self.tasks, self.weighting if weighted else None)

    def task_loss(self, batch: Batch, *, weighted: bool = True) -> Tensor:
        return self.task_losses(batch, weighted=weighted)[0]

    def regulariser(self, values: Tensor, owners: Sequence[str]) -> Tensor:
        """The squeeze (binary, entropy, flow, cost) of gate values or probabilities, at λ now; `owners`
        names the task of each value (or `*`, shared), whose `squeeze` strength scales it."""
        squeeze = self.squeeze
        weights = self.compactness() if squeeze.kind in ("flow", "cost") else None
        strength = {task.name: task.squeeze for task in self.tasks}
        scale = None
        if any(value != 1.0 for value in strength.values()):
            scale = values.new_tensor([strength.get(owner, 1.0) for owner in owners])
        return squeeze_loss(values, kind=squeeze.kind, weight=self.squeeze_weight, rho=squeeze.rho,
                            compactness_weights=weights, scale=scale)

    def sharing(self, slots: Tensor) -> Tensor:
        """The sharing term (`search.sharing`) of the slot gates, at its weight now: the mean of
        (g_e,t − g_e,t')² over every edge and pair of the tasks it serves."""
        if self.sharing_weight == 0:
            return slots.new_zeros(())
        if self._pairs is None:
            by_edge: dict[str, list[int]] = {}
            for (edge, _task), slot in self.supernet.gates.slots.items():
                by_edge.setdefault(edge, []).append(slot)
            pairs = [(a, b) for members in by_edge.values() for i, a in enumerate(members) for b in members[i + 1:]]
            self._pairs = (torch.tensor([a for a, _ in pairs], dtype=torch.long, device=slots.device),
                           torch.tensor([b for _, b in pairs], dtype=torch.long, device=slots.device))
        first, second = self._pairs
        if first.numel() == 0:
            return slots.new_zeros(())
        return self.sharing_weight * (slots[first] - slots[second]).pow(2).mean()

    def budget_term(self) -> Tensor:
        """The budget's term of the architecture loss, on the gates' probabilities (0 without one)."""
        table = self.supernet.gates
        if self.budget is None or not table.slots:
            return torch.zeros(())  # a 0-dim CPU tensor adds to one on any device
        return self.budget.penalty(table.slot_values(table.probabilities()))

    def after_architecture_step(self) -> None:
        """Count the network's cost and move the budget's multipliers, when it is time to."""
        if self.budget is not None:
            self.budget.update()

    def gate_optimizer(self) -> torch.optim.Optimizer:
        parameters = list(self.supernet.gates.parameters())
        stage = self.stage
        return torch.optim.Adam(parameters or [torch.zeros(0, requires_grad=True)], lr=stage.gate_lr,
                                betas=tuple(stage.gate_betas), weight_decay=stage.gate_weight_decay)


class SearchStrategy:
    """Base of the strategies: `optimizers` (checkpointed, in order), `scheduled` (those following
    the stage's lr schedule), `step`, and any state of its own to checkpoint."""

    name = ""

    def __init__(self, context: SearchContext) -> None:
        self.context = context
        self.optimizers: list[torch.optim.Optimizer] = []
        self.scheduled: list[torch.optim.Optimizer] = []

    def step(self, batch: Batch, epoch: int, index: int) -> tuple[float, float]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


def make_strategy(context: SearchContext) -> SearchStrategy:
    """The strategy the stage names (`train.search.strategy`)."""
    from .gradient import GradientSearch
    from .reinforce import ReinforceSearch

    strategies: dict[str, type[SearchStrategy]] = {"gradient": GradientSearch, "reinforce": ReinforceSearch}
    return strategies[context.stage.strategy](context)


STRATEGIES: tuple[str, ...] = ("gradient", "reinforce")
