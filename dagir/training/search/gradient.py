"""`gradient`: the decisions relaxed and trained by back-propagation (the paper's search; MTL-NAS).

`joint`: one backward pass of (task losses + squeeze) per batch; the decisions and, when
`train_weights`, Θ step together. `alternating`: an architecture step (decisions, under
`arch_relaxation`, with the squeeze) then a weight step (Θ and the heads, under
`weight_relaxation`, no squeeze). With `train.search.split` the architecture step takes its batch
from the held-out split, so the two never see the same sample (MTL-NAS); without it, the
architecture and weight steps take alternate batches of the one training split. Each alternating
step computes only the gradients it applies (`without_gradients`). With `arch_norm: running` the
architecture step's batch norms use their running statistics (`running_norm_statistics`).
"""
from __future__ import annotations

from ..descent import stepped_by
from ..loop import Batch, make_optimizer
from ..norms import running_norm_statistics
from . import SearchContext, SearchStrategy, step_generator, without_gradients


class GradientSearch(SearchStrategy):
    name = "gradient"

    def __init__(self, context: SearchContext) -> None:
        super().__init__(context)
        stage = context.stage
        self.gates = context.gate_optimizer()
        self.weights = make_optimizer(context.heads + (context.weights if stage.train_weights else []), stage)
        self.optimizers = [self.gates, self.weights]
        self.scheduled = [self.weights]  # the decisions follow τ, not an lr schedule

    def step(self, batch: Batch, epoch: int, index: int) -> tuple[float, float]:
        stage = self.context.stage
        self.context.supernet.gates.generator = step_generator(self.context.seed, epoch, index)
        if stage.mode == "joint":
            return self._joint(batch)
        held_out = self.context.arch_batch(epoch, index)
        if held_out is not None:
            _, squeezed = self._architecture(held_out)
            return self._weights(batch), squeezed
        if index % 2 == 0:
            return self._weights(batch), 0.0
        return self._architecture(batch)

    def _joint(self, batch: Batch) -> tuple[float, float]:
        context, table = self.context, self.context.supernet.gates
        table.relaxation = context.stage.arch_relaxation
        task, terms = context.task_losses(batch)
        squeezed = self._regularised(table())
        self._zero()
        precision = context.precision
        context.descent.backward(task + squeezed, terms, stepped_by(self.weights), others=True)
        precision.step(self.gates)
        precision.step(self.weights)
        context.after_architecture_step()
        return float(task.detach()), float(squeezed.detach())

    def _architecture(self, batch: Batch) -> tuple[float, float]:
        context, table = self.context, self.context.supernet.gates
        table.relaxation = context.stage.arch_relaxation
        scheduled_tau = table.tau
        if context.stage.arch_tau is not None:
            table.tau = context.stage.arch_tau
        try:
            with without_gradients(context.heads + context.weights), \
                    running_norm_statistics(context.supernet, context.stage.arch_norm == "running"):
                task = context.task_loss(batch)
                squeezed = self._regularised(table())
                self._zero()
                context.precision.backward(task + squeezed)
        finally:
            table.tau = scheduled_tau
        context.precision.step(self.gates)
        context.after_architecture_step()
        return float(task.detach()), float(squeezed.detach())

    def _weights(self, batch: Batch) -> float:
        context, table = self.context, self.context.supernet.gates
        table.relaxation = context.stage.weight_relaxation
        with without_gradients(table.parameters()):
            loss, terms = context.task_losses(batch)
            self._zero()
            context.descent.backward(loss, terms, stepped_by(self.weights))
        context.precision.step(self.weights)
        return float(loss.detach())


    def _regularised(self, slots):
        """The squeeze, the sharing term of the slot gates and the budget's term."""
        context = self.context
        return (context.regulariser(slots, context.supernet.gates.slot_tasks) + context.sharing(slots)
                + context.budget_term())

    def _zero(self) -> None:
        self.gates.zero_grad(set_to_none=True)
        self.weights.zero_grad(set_to_none=True)
