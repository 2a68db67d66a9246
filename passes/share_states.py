"""`share-states`: find the states tasks have in common, so each is computed once (DESIGN §4, "Sharing")."""
from __future__ import annotations

from typing import Any

from dagir.errors import UserError
from dagir.ir import IR
from dagir.pass_manager import Pass, register_pass
from dagir.task_states import nodes_on_paths, state_owner


@register_pass
class ShareStates(Pass):
    """Group, at every node, the tasks that compute the same state there.

    After discretisation a kept edge has gate 1 and a dropped one is absent, so task t's state at
    node v is determined by the structure alone: the set of edges kept for t into v and t's states at
    their sources. Two tasks therefore share v's state iff they keep the same edges into v and share
    the state of every source (an inductive, structural test, made in one topological sweep: each
    state gets a class, and a state's key is its in-edges with their sources' classes). A source the
    task never reaches counts as its own class, so tasks whose kept in-edges differ are never merged.
    A node owned by a task (a head, a per-task chain) holds that task's state only, and every edge
    reading from it reads that state.

    Only tasks with v on one of their kept input-to-head paths have a state at v. The result, for
    the compact lowering, is `ir.meta["share_states"]`:
      `states`: {node: [[tasks sharing state 1], [tasks sharing state 2], ...]}, groups ordered by
        their first task in the IR's task order;
      `distinct_states` (states computed once each) and `task_states` (what one state per task at
        every node would cost);
      `untie`: with `untie=true` (`search.reduction.untie`) an op the compact network calls on
        several states has a copy of its weights per state, so tasks share weights only where they
        share a state (`torch_compact.PerStateCopy`, costed by `compact_cost.compact_parameters`);
        otherwise every state shares the op's weights and keeps batch norms of its own.
    Edges and nodes are not changed.
    """

    name = "share-states"
    untie: bool = False

    def run(self, ir: IR) -> IR:
        if not ir.discretized:
            raise UserError("share-states needs a discretised IR: run 'discretize' first")
        out = ir.copy()
        tasks = out.task_names
        incoming = out.in_edges()
        on_paths = {t: nodes_on_paths(out, t, incoming=incoming) for t in tasks}
        state_class: dict[tuple[str, str], int] = {}  # (node, task) -> class of the task's state there
        states: dict[str, list[list[str]]] = {}
        for node_name in out.topological_order():
            node = out.nodes[node_name]
            users = [t for t in tasks if node_name in on_paths[t]]
            if not users:
                continue
            if node.task is not None:
                users = [node.task]  # computed once, as its owner computes it, whoever reads it
            groups: dict[Any, list[str]] = {}
            for task in users:
                groups.setdefault(self._key(out, incoming[node_name], task, state_class), []).append(task)
            states[node_name] = list(groups.values())
            for index, group in enumerate(states[node_name]):
                for task in group:
                    state_class[(node_name, task)] = index
        out.meta["share_states"] = {
            "states": states,
            "distinct_states": sum(len(groups) for groups in states.values()),
            "task_states": sum(len(group) for groups in states.values() for group in groups),
            "untie": self.untie}
        return out

    @staticmethod
    def _key(ir: IR, in_edges: list, task: str, state_class: dict[tuple[str, str], int]) -> frozenset:
        """What determines `task`'s state at a node: its kept in-edges and their sources' states."""
        key = set()
        for edge in in_edges:
            if edge.is_active(task):
                reader = state_owner(ir, edge.src, task)  # an owned node serves its owner's state
                key.add((edge.src, state_class.get((edge.src, reader), -1)))
        return frozenset(key)
