"""`discretize`: turn the searched gates into a keep mask per task (DESIGN §4, "Discretisation")."""
from __future__ import annotations

from typing import Any

from pydantic import Field

from dagir.flow import best_path, gate_value, gate_weights
from dagir.ir import IR, edge_name
from dagir.pass_manager import Pass, register_pass


@register_pass
class Discretize(Pass):
    """Keep edge e for task t iff its gate σ(logit) >= `threshold`; ungated edges are always kept.

    A hard threshold alone may cut every path of a task, so the path of largest gate product (the
    one `dagir.flow.best_path` chooses, which `flow-reduce` later protects) is then kept for its task
    even where some of its gates fall under the threshold. Edges already dropped stay dropped.

    The pass reports, in `ir.meta["discretize"]`, the discretisation gap — the mean distance of the
    gates from {0, 1}, which the squeeze loss is meant to make small: a large gap means the hard
    network differs much from the soft one that was searched — with the number of kept edges per task
    and the edges kept only because they lie on a task's best path (`forced`).

    Discretising invalidates an earlier reduction, so the result is marked not reduced.
    """

    name = "discretize"
    threshold: float = Field(0.5, gt=0, lt=1)

    @classmethod
    def spec_defaults(cls, spec: Any) -> dict[str, Any]:
        return {"threshold": spec.search.reduction.threshold}

    def run(self, ir: IR) -> IR:
        out = ir.copy()
        distances: list[float] = []
        kept_per_task: dict[str, int] = {}
        forced: dict[str, list[str]] = {}
        for task in out.task_names:
            weights = gate_weights(out, task)  # the edges active for the task, before thresholding
            protected = set(best_path(out, task, weights))
            forced[task], kept_per_task[task] = [], 0
            for key in weights:
                edge = out.edges[key]
                gate = gate_value(edge, task)
                if edge.gated and edge.tasks[task].gate_logit is not None:
                    distances.append(min(gate, 1.0 - gate))
                keep = gate >= self.threshold or key in protected
                if keep and gate < self.threshold:
                    forced[task].append(edge_name(*key))
                kept_per_task[task] += keep
                out.edges[key] = edge.with_task_state(task, keep=keep)
        out.discretized, out.reduced = True, False
        for stale in ("flow_reduce", "share_states"):
            out.meta.pop(stale, None)
        out.meta["discretize"] = {
            "threshold": self.threshold,
            "gap": sum(distances) / len(distances) if distances else 0.0,
            "gates": len(distances), "kept_per_task": kept_per_task, "forced": forced}
        return out
