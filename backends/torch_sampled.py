"""The supernet's forward when its gates are fixed (a sampled route, a warm-up's dropped edges):
only the sampled network is computed, and each distinct state once.

In "fixed" mode (`GateTable.fix`, as REINFORCE's samples and the warm-up's edge dropout set them)
most gates are exactly 0 or 1, and tasks that drew the same routes hold the same states. The
task-batched graph would still run every edge for every task's state and multiply the dropped ones
by 0. `SampledForward` instead walks the IR from the heads, as the reference evaluator does, and
computes a state only from its edges whose gate is not 0; a state is identified by its node, its
kept in-edges with their gate values, and the states they read, so tasks whose sampled in-edges and
upstream states agree compute it once, as the compact network does. The cost of a step thus grows
with the distinct states of the sample, not with the number of tasks.

The outputs equal the reference evaluator's (`backends/reference.py`, the IR's semantics) with the
same option values. An edge outside the sample is not run at all: its weights get no gradient
(None, as in the compact network, so an optimiser leaves them be) and its batch norm gathers no
statistics from a state it does not feed.
"""
from __future__ import annotations

from typing import Any, Hashable

from torch import Tensor, nn

from dagir.ir import IR
from dagir.task_states import reached_nodes, state_owner

from .torch_supernet import aggregation_module_name, node_op_module_name


class SampledForward:
    """`forward(x)` of a supernet in fixed mode: `{task: output}` from the distinct sampled states."""

    def __init__(self, ir: IR, root: nn.Module) -> None:
        self.ir, self.root = ir, root
        self.incoming = ir.in_edges()
        self.reached = {task: reached_nodes(ir, task) for task in ir.task_names}
        self.heads = {task: ir.head_of(task).name for task in ir.task_names}
        self.computed = 0  # states computed by the last call (for tests and benchmarks)

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        ir, root = self.ir, self.root
        gates = root.gates
        slot_values = gates()
        floats = slot_values.tolist()
        signatures: dict[tuple[str, str], Hashable] = {}
        states: dict[Hashable, Tensor] = {}

        def gate(edge_name: str, task: str) -> tuple[float, Any]:
            slot = gates.slots.get((edge_name, task))
            return (1.0, None) if slot is None else (floats[slot], slot_values[slot])

        def state(name: str, task: str) -> tuple[Hashable, Tensor]:
            task = state_owner(ir, name, task)
            node = ir.nodes[name]
            if node.kind == "input":
                return "input", x
            if (name, task) in signatures:
                key = signatures[(name, task)]
                return key, states[key]
            kept = []
            for edge in self.incoming[name]:
                source_task = state_owner(ir, edge.src, task)
                if not (edge.is_active(task) and edge.src in self.reached[source_task]):
                    continue
                value, weight = gate(edge.name, task)
                if value != 0.0:
                    source_key, source = state(edge.src, task)
                    kept.append((edge, value, weight, source_key, source))
            key = (name, tuple((edge.name, value, source_key) for edge, value, _, source_key, _ in kept))
            signatures[(name, task)] = key
            if key not in states:
                states[key] = self._compute(node, kept, x)
                self.computed += 1
            return key, states[key]

        self.computed = 0
        return {task: state(self.heads[task], task)[1] for task in ir.task_names}

    def _compute(self, node, kept: list, x: Tensor) -> Tensor:
        root, incoming = self.root, self.incoming[node.name]
        terms = {edge.name: (root.get_submodule(edge.name)(source) if weight is None
                             else weight * root.get_submodule(edge.name)(source))
                 for edge, _, weight, _, source in kept}
        if node.aggregation == "sum":
            value = sum(terms.values()) if terms else self._zeros(node, x)
        else:
            aggregate = root.get_submodule(aggregation_module_name(node))
            slots = [terms.get(edge.name) for edge in incoming]
            query = x if node.query == "input" else None
            if node.aggregation == "gate":
                value = aggregate(slots, None, query) if terms else self._zeros(node, x)
            else:  # nddr: an empty slot is zeros, as 0 · output is (and all empty: zeros in all)
                filled = slots if terms else [self._zeros(node, x)] + slots[1:]
                value = aggregate(filled, None, query) if node.aggregation == "mix" else aggregate(filled)
        if node.op is not None:
            value = root.get_submodule(node_op_module_name(node))(value)
        return value

    def _zeros(self, node, x: Tensor) -> Tensor:
        return x.new_zeros((x.shape[0], *node.input_type.shape))
