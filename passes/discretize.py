"""`discretize`: turn every searched decision into kept edges per task (DESIGN §4, §9)."""
from __future__ import annotations

from dataclasses import replace

from pydantic import Field

from dagir.flow import best_path, gate_weights
from dagir.gates import argmax
from dagir.ir import IR, edge_name
from dagir.pass_manager import Pass, register_pass


@register_pass
class Discretize(Pass):
    """Keep an edge for a task by its decision: a bernoulli's edge iff σ(logit) >= `threshold`, a
    categorical's chosen option (the argmax); an edge no decision governs is always kept.

    A hard threshold alone may cut every path of a task, so the path of largest gate product (the
    one `dagir.flow.best_path` chooses, which `flow-reduce` later protects) is then kept for its task
    even where some of its bernoulli gates fall under the threshold; edges a categorical choice left
    out take no part in that path. Edges already dropped stay dropped. A task decides the edges
    that feed its own states (`dagir.task_states`); each decision records its choice per task.

    The pass reports, in `ir.meta["discretize"]`, the discretisation gap — the mean distance of the
    decisions from a hard choice (min(p, 1 - p) for a bernoulli, 1 - max p for a categorical), which
    the squeeze loss is meant to make small: a large gap means the hard network differs much from
    the soft one that was searched — with the number of kept edges per task and the edges kept only
    because they lie on a task's best path (`forced`).

    Discretising invalidates an earlier reduction, so the result is marked not reduced.
    """

    name = "discretize"
    threshold: float = Field(0.5, gt=0, lt=1)

    def run(self, ir: IR) -> IR:
        out = ir.copy()
        decided = out.decision_of_edge()
        choices: dict[str, dict[str, int]] = {name: {} for name in out.decisions}
        distances: list[float] = []
        for decision in out.decisions.values():
            if decision.kind == "categorical":
                for task in decision.tasks:
                    choices[decision.name][task] = argmax(decision.logits_of(task))
                    distances.append(1.0 - max(decision.probabilities(task)))

        def left_out(key: tuple[str, str], owner: str) -> bool:
            decision = decided.get(key)
            return (decision is not None and decision.kind == "categorical" and owner in decision.tasks
                    and key not in decision.options[choices[decision.name][owner]])

        kept_per_task: dict[str, int] = {}
        forced: dict[str, list[str]] = {}
        for task in out.task_names:
            weights = {key: w for key, w in gate_weights(out, task).items() if not left_out(key, task)}
            protected = set(best_path(out, task, weights))
            forced[task], kept_per_task[task] = [], 0
            for key in gate_weights(out, task):  # the edges feeding the task's own states
                decision = decided.get(key)
                if decision is None or task not in decision.tasks:
                    keep = True
                elif decision.kind == "bernoulli":
                    gate = weights[key]
                    distances.append(min(gate, 1.0 - gate))
                    keep = gate >= self.threshold or key in protected
                    if keep and gate < self.threshold:
                        forced[task].append(edge_name(*key))
                    choices[decision.name][task] = int(keep)
                else:
                    keep = not left_out(key, task)
                kept_per_task[task] += keep
                out.edges[key] = out.edges[key].with_task_state(task, keep=keep)
        for name, decision in out.decisions.items():
            out.decisions[name] = replace(decision, chosen={t: choices[name].get(t, 0) for t in decision.tasks})
        out.discretized, out.reduced = True, False
        for stale in ("flow_reduce", "share_states"):
            out.meta.pop(stale, None)
        out.meta["discretize"] = {
            "threshold": self.threshold,
            "gap": sum(distances) / len(distances) if distances else 0.0,
            "gates": len(distances), "kept_per_task": kept_per_task, "forced": forced}
        return out
