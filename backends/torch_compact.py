"""Lower a searched, reduced IR to the compact module: one network serving every task (DESIGN §4
"Sharing", §6).

The compact module has no gates: an edge is present for the tasks that keep it, with weight 1.
Each distinct state (`dagir.compact_cost.compact_states`: a node and a group of tasks from
`share-states`) is computed once, each edge op once per distinct source state it reads, and one
forward pass returns every task's output:

    ir = PassManager(parse_pipeline(["discretize", "flow-reduce", "share-states"], needs_build=False)).run(ir)
    compact = lower_compact(ir, supernet)      # weights copied from the searched supernet
    outputs = compact(x)                       # {"depth": tensor, "segment": tensor}

Exporting and loading it is `torch_export`'s job.

Given the supernet, the compact module computes exactly what the supernet computes with hard gates
equal to the keep masks (1 where kept, 0 elsewhere, including the edges the reduction deleted). A
gate-0 edge delivers zeros, so a `sum` node just omits it, an `nddr` node keeps the slice of its
fusion weights for the kept inputs, and a `gate` node, whose softmax takes no gate-0 input, keeps
the rows and columns of its routing layer for the kept inputs.

An op called on several states (an edge reading several states of its source, a node's nddr
aggregation or op computing several states) keeps one set of weights but a batch norm per state
(`PerStateNorm`, each copied from the supernet's), so fine-tuning trains batch norm on what each
state really feeds it, and the statistics used at test time match. With untied states
(`share-states{untie=true}`, `search.reduction.untie`) each state has its own copy of the whole op
instead (`PerStateCopy`), so the tasks whose states differ fine-tune weights of their own.

Names follow the IR: `edge_h2_h4`, `node_h3` (aggregation), `head_<task>`; a hidden node's states are
`h3_s0`, `h3_s1`, ... in the order of its groups in `ir.meta["share_states"]`.
"""
from __future__ import annotations

import copy
import operator
from typing import Any

import torch
from torch import Tensor, fx, nn

from dagir.compact_cost import CompactState, StateKey, aggregation_edges, compact_states, untied_states
from dagir.ir import IR, Edge, Node, gate_query_width

from .torch_aggregations import GateAggregation, MixAggregation, NddrAggregation
from .torch_ops import build_aggregation, build_op
from .torch_supernet import aggregation_module_name, apply_node_op

# -- per-state batch norm: torch only, so `export_compact` can copy its source verbatim -----------
class PerStateNorm(nn.Module):
    """An op the compact network calls on several states: one set of weights, but every state keeps
    its own batch norms (statistics and affine parameters), so fine-tuning can train batch norm
    without averaging statistics over inputs that differ. `forward(*inputs, state)`: state 0 runs
    `op` as it is, state i > 0 runs it with the batch norms in `norms[i - 1]` (same order as `names`)."""

    def __init__(self, op: nn.Module, states: int) -> None:
        super().__init__()
        self.op = op
        self.names = [name for name, m in op.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.norms = nn.ModuleList(nn.ModuleList(copy.deepcopy(op.get_submodule(name)) for name in self.names)
                                   for _ in range(states - 1))
        # per state i > 0, `op` with the batch norms of `norms[i - 1]` in place of its own and everything else
        # (the weights) the same objects: a shallow copy of each module on the way to a batch norm. A plain
        # list, so not registered (its tensors are, as `op`'s and `norms`'); plain modules, so `torch.jit.trace`
        # and `torch.compile` follow them (`torch.func.functional_call` is not traceable)
        self.views = [self._replaced(op, dict(zip(self.names, norms)), "") for norms in self.norms]

    def forward(self, *inputs) -> Tensor:
        *x, state = inputs
        return self.op(*x) if state == 0 else self.views[state - 1](*x)

    def train(self, mode: bool = True) -> "PerStateNorm":
        super().train(mode)
        for view in self.views:  # the shallow copies are not children: their mode is set here
            for module in view.modules():
                module.training = mode
        return self

    @classmethod
    def _replaced(cls, module: nn.Module, replacements: dict, path: str) -> nn.Module:
        if path in replacements:
            return replacements[path]
        if path and not any(name.startswith(path + ".") for name in replacements):
            return module
        view = copy.copy(module)  # shares the parameter and buffer dicts; its own dict of children:
        view.__dict__["_modules"] = {name: cls._replaced(child, replacements, f"{path}.{name}" if path else name)
                                     for name, child in module._modules.items()}
        return view

    def copy_to_states(self) -> None:
        """Give every state the op's own batch norms (after its weights were loaded)."""
        for norms in self.norms:
            for name, norm in zip(self.names, norms):
                norm.load_state_dict(self.op.get_submodule(name).state_dict())


class PerStateCopy(nn.Module):
    """An op the compact network calls on several states, with untied states
    (`search.reduction.untie`): every state has its own copy of the op, weights and batch norms,
    each starting as the op's. `forward(*inputs, state)`: state 0 runs `op`, state i > 0 `copies[i - 1]`."""

    def __init__(self, op: nn.Module, states: int) -> None:
        super().__init__()
        self.op = op
        self.copies = nn.ModuleList(copy.deepcopy(op) for _ in range(states - 1))

    def forward(self, *inputs) -> Tensor:
        *x, state = inputs
        return self.op(*x) if state == 0 else self.copies[state - 1](*x)

    def copy_to_states(self) -> None:
        """Start every state from the op's weights (after they were loaded)."""
        for twin in self.copies:
            twin.load_state_dict(self.op.state_dict())


def _has_norm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def _per_state(root: nn.Module, graph: fx.Graph, untie: bool) -> None:
    """Wrap every module the graph calls more than once: with batch norm in `PerStateNorm`, or,
    untied, every one with parameters in `PerStateCopy`; each call is passed its state's index."""
    calls: dict[str, list[fx.Node]] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls.setdefault(str(node.target), []).append(node)
    for target, nodes in calls.items():
        module = root.get_submodule(target)
        if len(nodes) < 2:
            continue
        if untie and any(True for _ in module.parameters()):
            setattr(root, target, PerStateCopy(module, len(nodes)))
        elif _has_norm(module):
            setattr(root, target, PerStateNorm(module, len(nodes)))
        else:
            continue
        for index, node in enumerate(nodes):
            node.args = (*node.args, index)


# -- the supernet's aggregation slots -------------------------------------------------------------
def _edge_behind(value: Any) -> str | None:
    """The edge module whose output a supernet slot holds (through its gate multiplication)."""
    while isinstance(value, fx.Node) and value.op == "call_function":
        value = value.args[0]
    if isinstance(value, fx.Node) and value.op == "call_module" and str(value.target).startswith("edge_"):
        return str(value.target)
    return None


def supernet_slots(supernet: nn.Module, node: Node) -> list[str | None]:
    """The supernet's aggregation slots at `node`: the edge in each slot. `lower_supernet` records
    them in `aggregation_slots`; for a module without that record they are read from its fx graph."""
    recorded = getattr(supernet, "aggregation_slots", None)
    if isinstance(recorded, dict):
        if node.name not in recorded:
            raise ValueError(f"the supernet never calls {aggregation_module_name(node)}: "
                             "was it lowered from another IR?")
        return list(recorded[node.name]["slots"])
    return _slots_from_graph(supernet, node)


def _slots_from_graph(supernet: nn.Module, node: Node) -> list[str | None]:
    graph = getattr(supernet, "graph", None)
    if not isinstance(graph, fx.Graph):
        raise ValueError("copying nddr/gate aggregations needs the supernet as lowered (a GraphModule)")
    target = aggregation_module_name(node)
    calls = [n for n in graph.nodes if n.op == "call_module" and n.target == target]
    if not calls:
        raise ValueError(f"the supernet never calls {target}: was it lowered from another IR?")
    edges: list[str | None] = [None] * len(calls[0].args[0])
    for call in calls:
        for i, value in enumerate(call.args[0]):
            edges[i] = edges[i] or _edge_behind(value)
    return edges


# -- lowering -------------------------------------------------------------------------------------
def _state_names(states: list[CompactState]) -> dict[StateKey, str]:
    names = {}
    for state in states:
        node = state.node
        if node.kind == "input":
            names[state.key] = "x"
        elif node.kind == "hidden" and node.task is None:
            names[state.key] = f"{node.name}_s{state.index}"
        else:
            names[state.key] = node.name
    return names


def lower_compact(ir: IR, supernet: nn.Module | None = None, *,
                  dtype: torch.dtype = torch.float32) -> fx.GraphModule:
    """The compact module of a reduced, shared IR: `module(x) -> {task: output}`, no gates.

    With `supernet` (lowered from the IR this one was reduced from), its weights and buffers are
    copied so the result equals the supernet with hard gates set to the keep masks.
    """
    states = compact_states(ir)
    names = _state_names(states)
    slots = aggregation_edges(ir, states)
    root = nn.Module()
    graph = fx.Graph()
    values: dict[StateKey, fx.Node] = {}
    edge_outputs: dict[tuple[str, StateKey], fx.Node] = {}
    readers: dict[tuple[str, StateKey], int] = {}
    sources_of: dict[str, set[StateKey]] = {}
    for state in states:
        for edge, source in state.inputs:
            readers[(edge.name, source)] = readers.get((edge.name, source), 0) + 1
            sources_of.setdefault(edge.name, set()).add(source)

    def edge_output(edge: Edge, source: StateKey, state_name: str | None) -> fx.Node:
        key = (edge.name, source)
        if key not in edge_outputs:
            if not hasattr(root, edge.name):
                if edge.op is None:
                    raise ValueError(f"edge {edge.name} has no op (run legalize-types first)")
                root.add_module(edge.name, build_op(edge.op))
            name = state_name if state_name and readers[key] == 1 else (
                edge.name if len(sources_of[edge.name]) == 1 else f"{edge.name}_{names[source]}")
            edge_outputs[key] = graph.create_node("call_module", edge.name, (values[source],), name=name)
        return edge_outputs[key]

    for state in states:
        node, name = state.node, names[state.key]
        if node.kind == "input":
            values[state.key] = network_input = graph.placeholder("x")
            continue
        sole = len(state.inputs) == 1 and node.aggregation == "sum" and node.op is None
        terms = {edge.name: edge_output(edge, source, name if sole else None) for edge, source in state.inputs}
        aggregate_name = name + "_in" if node.op is not None else name
        if node.aggregation == "sum":
            outputs = list(terms.values())
            value = outputs[0]
            for position, output in enumerate(outputs[1:], start=2):
                value = graph.create_node("call_function", operator.add, (value, output),
                                          name=aggregate_name if position == len(outputs) else None)
        else:
            module_name = aggregation_module_name(node)
            if not hasattr(root, module_name):
                root.add_module(module_name, build_aggregation(
                    node.aggregation, len(slots[node.name]), node.input_type,
                    query_width=gate_query_width(node, ir.input_node().type), nddr_norm=node.nddr_norm))
            inputs = [terms.get(edge.name) for edge in slots[node.name]]
            arguments = (inputs, None, network_input) if node.query == "input" else (inputs,)
            value = graph.create_node("call_module", module_name, arguments, name=aggregate_name)
        values[state.key] = apply_node_op(graph, root, node, value, name)

    index = {(state.node.name, task): state.key for state in states for task in state.tasks}
    graph.output({task: values[index[(ir.head_of(task).name, task)]] for task in ir.task_names})
    _per_state(root, graph, untie=untied_states(ir))
    root.to(dtype)
    module = fx.GraphModule(root, graph, class_name="CompactNetwork")
    module.graph.lint()
    if supernet is not None:
        copy_supernet_weights(module, supernet, ir, slots)
    return module


# -- weights from the supernet --------------------------------------------------------------------
def copy_supernet_weights(module: nn.Module, supernet: nn.Module, ir: IR, slots: dict[str, list[Edge]]) -> None:
    """Copy the supernet's parameters and buffers into the compact module, by submodule name;
    aggregations take the slice of their weights for the inputs the compact node kept."""
    with torch.no_grad():
        for name, child in module.named_children():
            source = getattr(supernet, name, None)
            if source is None:
                raise ValueError(f"the supernet has no submodule {name!r}: was it lowered from another IR?")
            per_state = isinstance(child, (PerStateNorm, PerStateCopy))
            target = child.op if per_state else child
            if isinstance(target, (NddrAggregation, GateAggregation, MixAggregation)):
                node = ir.nodes[name[len("node_"):]]
                _copy_aggregation(target, source, supernet, node, slots[node.name])
            else:
                target.load_state_dict(source.state_dict())
            if per_state:
                child.copy_to_states()


def _copy_aggregation(child: nn.Module, source: nn.Module, supernet: nn.Module, node: Node,
                      edges: list[Edge]) -> None:
    if isinstance(child, MixAggregation):  # each half as it is alone, and the weight mixing them
        _copy_aggregation(child.nddr, source.nddr, supernet, node, edges)
        _copy_aggregation(child.gate, source.gate, supernet, node, edges)
        child.mix.copy_(source.mix)
        return
    original = supernet_slots(supernet, node)
    width = child.config["width"]
    kept = [original.index(e.name) for e in edges]
    columns = torch.cat([torch.arange(slot * width, (slot + 1) * width) for slot in kept])
    if isinstance(child, NddrAggregation):
        child.fuse.weight.copy_(source.fuse.weight[:, columns])
        child.norm.load_state_dict(source.norm.state_dict())
    else:  # the routing logits of the kept inputs, over their features (or over the whole query)
        rows = torch.tensor(kept, dtype=torch.long)
        weight = source.route.weight[rows]
        child.route.weight.copy_(weight if child.config["query_width"] is not None else weight[:, columns])
        child.route.bias.copy_(source.route.bias[rows])
