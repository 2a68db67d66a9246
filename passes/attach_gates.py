"""`attach-gates`: a bernoulli decision on every gated edge (A, B, Γ of DESIGN §4)."""
from __future__ import annotations

import random
from typing import Literal

from pydantic import Field

from dagir.ir import IR, SHARED, Decision
from dagir.pass_manager import Pass, register_pass


@register_pass
class AttachGates(Pass):
    """Give every gated edge a bernoulli decision with logit `init` (plus Gaussian `noise`) for
    every task it serves, or one logit all tasks share (`scope=shared`).

    The gate is σ(logit / τ); the default init 1.0 starts every gate near 0.73, so search starts
    from a network that uses every edge, as warm-up trained it, with the gates still free to move
    either way (MTL-NAS starts at 0: p = 0.5). `seed` makes the noise reproducible. The decision is
    named after its edge (`edge_h1_h2`).
    """

    name = "attach-gates"
    init: float = 1.0
    noise: float = Field(0.0, ge=0)
    seed: int = 0
    scope: Literal["task", "shared"] = "task"

    def run(self, ir: IR) -> IR:
        out = ir.copy()
        rng = random.Random(self.seed)

        def logit() -> tuple[float]:
            return (self.init + (rng.gauss(0.0, self.noise) if self.noise else 0.0),)

        for key, edge in out.edges.items():
            if not edge.gated:
                continue
            tasks = tuple(edge.active_tasks())
            logits = {SHARED: logit()} if self.scope == "shared" else {task: logit() for task in tasks}
            out.add_decision(Decision(edge.name, "bernoulli", ((key,),), tasks, logits, scope=self.scope))
        return out
