"""`attach-gates`: a gate logit per task on every gated edge (A, B, Γ of DESIGN §4)."""
from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from pydantic import Field

from dagir.ir import IR, EdgeTaskState
from dagir.pass_manager import Pass, register_pass


@register_pass
class AttachGates(Pass):
    """Give every gated edge, for every task it serves, the logit `init` (plus Gaussian `noise`).

    The gate is σ(logit / τ); the default init 1.0 starts every gate near 0.73, so search starts
    from a network that uses every edge, as warm-up trained it, with the gates still free to move
    either way. `seed` makes the noise reproducible.
    """

    name = "attach-gates"
    init: float = 1.0
    noise: float = Field(0.0, ge=0)
    seed: int = 0

    @classmethod
    def spec_defaults(cls, spec: Any) -> dict[str, Any]:
        gates = spec.search.gates
        return {"init": gates.init, "noise": gates.init_noise, "seed": spec.seed}

    def run(self, ir: IR) -> IR:
        out = ir.copy()
        rng = random.Random(self.seed)
        for key, edge in out.edges.items():
            if edge.gated:
                tasks = {t: replace(s, gate_logit=self.init + (rng.gauss(0.0, self.noise) if self.noise else 0.0))
                         for t, s in edge.tasks.items()}
                out.edges[key] = replace(edge, tasks=tasks)
        return out
