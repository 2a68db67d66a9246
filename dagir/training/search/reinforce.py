"""`reinforce`: sampled decisions, trained by the policy gradient (MTNAS).

Every step draws one option per decision (per task) from the logits, fixes the supernet to that
sampled network, and
1. trains the sampled network's weights (Θ and the heads) by back-propagation on the batch;
2. measures the reward, minus the sampled network's task loss on the architecture batch (the
   held-out split's with `train.search.split`, else the same batch), and moves the logits along
   (reward − baseline) · ∇ log p(sample), the baseline a moving average of the rewards
   (`train.search.reward_decay`). Regularisers (the squeeze, the budget) act on the decisions'
   probabilities.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from ..descent import stepped_by
from ..loop import Batch, make_optimizer
from . import SearchContext, SearchStrategy, step_generator


class ReinforceSearch(SearchStrategy):
    name = "reinforce"

    def __init__(self, context: SearchContext) -> None:
        super().__init__(context)
        self.gates = context.gate_optimizer()
        self.weights = make_optimizer(context.heads + context.weights, context.stage)
        self.optimizers = [self.gates, self.weights]
        self.scheduled = [self.weights]
        self.baseline: float | None = None

    def step(self, batch: Batch, epoch: int, index: int) -> tuple[float, float]:
        context, table = self.context, self.context.supernet.gates
        table.generator = step_generator(context.seed, epoch, index)
        sample = table.sample()
        table.fix(sample)
        table.mode = "fixed"
        try:
            loss, terms = context.task_losses(batch)
            self.weights.zero_grad(set_to_none=True)
            context.descent.backward(loss, terms, stepped_by(self.weights))
            context.precision.step(self.weights)
            held_out = context.arch_batch(epoch, index)
            with torch.no_grad():
                reward = -float(context.task_loss(batch if held_out is None else held_out, weighted=False))
            reward = context.precision.world.mean(reward)  # every rank's baseline and advantage agree
        finally:
            table.mode = "soft"
        decay = context.stage.reward_decay
        advantage = 0.0 if self.baseline is None else reward - self.baseline
        self.baseline = reward if self.baseline is None else decay * self.baseline + (1 - decay) * reward
        probabilities = table.probabilities()
        squeezed = (context.regulariser(probabilities, table.value_owners)
                    + context.sharing(table.slot_values(probabilities)) + context.budget_term())
        policy = -advantage * table.log_prob(sample) + squeezed
        self.gates.zero_grad(set_to_none=True)
        context.precision.backward(policy)
        context.precision.step(self.gates)
        context.after_architecture_step()
        return float(loss.detach()), float(squeezed.detach())

    def state_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.baseline = state.get("baseline")
