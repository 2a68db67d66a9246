"""Lower a gated IR to the supernet: a `torch.fx.GraphModule` with readable generated code.

The graph computes DESIGN §4 literally. Per task t, a hidden node's state is
`h_j^t = Σ_{i→j active for t} g^t_ij · o_ij(h_i^t)` (or the node's `nddr` / `gate` / `mix` aggregation of the
gated terms), and a head computes `head_op(Σ_j g^t_j · q^t_j(h_j^t))`. Edge ops are shared by all
tasks: one submodule per edge (`edge_h2_h4`). Gates come from one `GateTable` submodule (`gates`),
whose mode and temperature are set at run time:

    module = lower_supernet(ir)
    module.gates.mode = "ones"        # warm-up: every gate 1
    module.gates.mode, module.gates.tau = "soft", 0.5
    outputs = module(x)               # {"depth": tensor, "segment": tensor}

States are numbered structurally while lowering (`plan_states`): two tasks share a state (computed
once) when they reach the node through the same edges, from the same states, with the same gates —
in practice the ungated prefix (input, stem).

**Task-batched lowering (the default, `batched=True`).** A node's states are stacked along the batch
dimension, `[K·B, ...]` for the K states that reach it, and every edge op runs once per node on the
stacked states it reads; the gates of the K states multiply the `[K, B, ...]` view as a `[K, 1, ...]`
vector (0 where an edge is inactive for a state). A `gate` node whose states see different inputs
calls its aggregation once per group of states with the same inputs (the softmax masks absent
inputs, so zeros would not do). Task-owned nodes hold one state (K = 1) and need no special case.
`batched=False` keeps the per-task lowering, one call per edge and state, for comparison.

Batch norm in train mode sees the stacked states of all tasks that reach an edge, so its batch
statistics (and one running-statistics update per step) are taken over the union of the tasks'
states rather than per task. We accept that: the layers are shared by all tasks (DESIGN §4, Θ), a
shared BN is meant to normalise what all tasks feed it, and in the default search Θ is frozen with
BN in eval mode, where batched and per-task outputs are identical. Use `batched=False` for per-task
statistics.

**Warm-up.** With every gate 1 (`gates.mode == "ones"`) the tasks' states coincide wherever they use
the same edges, so the batched module also holds a second graph planned without gates, in which
each such state is computed once; its `forward` switches to it (`forward_ones`) in "ones" mode.

**Fused edges (`fuse_edges=True`).** Edges that read the same stacked states and apply the same op
(`conv_bn_relu` with the same kernel and stride, `pool_conv_bn_relu` with the same stride,
`linear_relu`) run as one wider convolution / linear layer on the concatenated weights, split by
channel, then each edge's own batch norm (on a contiguous copy of its channels: BN on the strided slice
ran 2-3x slower, which made fusion lose at N = 32) and ReLU (BN is per channel, so the split is exact);
fused linear edges take one ReLU on the wide output before the split. The
submodules and state-dict keys stay the same. On by default: on the CPU a search step with fused
edges takes 0.83-1.00x the time of one without (`benchmarks/supernet_step.py`).

**Summed linear edges (`fuse_edges=True`, the `fuse-sums` rewrite).** A node of one state that sums
two or more `linear` / `pool_linear` edges (a head's read-outs) computes `Σ_i g_i (W_i x_i + b_i)`
as one linear layer, `[x_1, ..., x_n] @ [g_1 W_1 ... g_n W_n]^T + Σ_i g_i b_i` (the gate, where the
edge has one, commutes with the linear map, so it scales the edge's weight columns): one matrix
product instead of n, no chain of adds, and no product of an input with its gate.

**Gates applied by a `gate`, `mix` or `nddr` node.** Where every state of such a node sees the same inputs
(the soft search), its edges' outputs go to the aggregation ungated, with the `[K, k]` gates of its
states (`gated_forward`, one lookup in the gate table): a `gate` node gates the stacked inputs in one
product (vectors) or scales the pooled query and the softmax weights (images), a `mix` node gates the
stack once for both its halves, instead of one full-size product per edge. An `nddr` node of one state on
images scales its 1x1 conv's weight columns by the gates instead (the mixing is linear in each input;
a search step of MTL-NAS's space 0.90-0.94x the time); on vectors, and with several states, k small
products cost less than the reshaped weight, so those take their terms gated. Other nodes, and a node
whose states see different inputs, take their terms gated as above.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import Tensor, fx, nn

from dagir.ir import IR, SOFTMAX_AGGREGATIONS, Edge, Node, TensorType, gate_query_width
from dagir.task_states import state_owner

from .torch_gates import GateTable, import_logits
from .torch_ops import build_aggregation, build_op

def node_op_module_name(node: Node) -> str:
    """Submodule name of a node's own op: `head_<task>` for heads, `op_<node>` otherwise."""
    return f"head_{node.task}" if node.kind == "head" else f"op_{node.name}"


def apply_node_op(graph: fx.Graph, root: nn.Module, node: Node, value: fx.Node, name: str) -> fx.Node:
    """`value` through the node's own op (a head, a cross-stitch layer), adding its module once."""
    if node.op is None:
        return value
    module_name = node_op_module_name(node)
    if not hasattr(root, module_name):
        root.add_module(module_name, build_op(node.op))
    return graph.create_node("call_module", module_name, (value,), name=name)


def aggregation_module_name(node: Node) -> str:
    return f"node_{node.name}"


def node_aggregation(node: Node, in_edges: list[Edge], network_input: TensorType) -> nn.Module | None:
    """The aggregation module of `node` over its in-edges (in `IR.in_edges()` order)."""
    query_width = gate_query_width(node, network_input)
    return build_aggregation(node.aggregation, len(in_edges), node.input_type,
                             own=[edge.kind != "cross" for edge in in_edges], fusion=node.fusion,
                             query_width=query_width, nddr_norm=node.nddr_norm)


# -- planning: which states exist, and what each is made of ---------------------------------------
@dataclass(frozen=True)
class Contribution:
    """One incoming edge's term in a state: the edge, the state it reads, its gate slot (None: 1)."""

    edge: Edge
    source: int
    slot: int | None


@dataclass
class State:
    """A distinct value at a node, with the tasks holding it (several only when provably equal)."""

    node: Node
    tasks: list[str]
    contributions: tuple[Contribution, ...]
    suffix: str = ""  # "_<task>" when the node holds several states, so names stay unique

    @property
    def name(self) -> str:
        return "x" if self.node.kind == "input" else self.node.name + self.suffix


@dataclass
class Plan:
    states: list[State] = field(default_factory=list)
    state_of: dict[tuple[str, str], int] = field(default_factory=dict)


def plan_states(ir: IR, slots: dict[tuple[str, str], int], *, gated: bool = True) -> Plan:
    """Number the states of every node per task, in topological order (state 0 is the input).

    With `gated=False` every gate counts as 1 ("ones" mode): tasks that use the same edges from the
    same states then share the state."""
    plan = Plan()
    source = ir.input_node()
    plan.states.append(State(source, list(ir.task_names), ()))
    plan.state_of.update({(source.name, t): 0 for t in ir.task_names})
    incoming, known = ir.in_edges(), {}
    for name in ir.topological_order():
        node = ir.nodes[name]
        if node.kind == "input":
            continue
        for task in ir.task_names if node.task is None else [node.task]:
            terms = []
            for edge in incoming[name]:
                reads = plan.state_of.get((edge.src, state_owner(ir, edge.src, task)))
                if edge.is_active(task) and reads is not None:
                    terms.append(Contribution(edge, reads, slots.get((edge.name, task)) if gated else None))
            if not terms:
                continue  # no active edge reaches this node for the task: it holds no state for it
            key = (name, tuple((c.edge.name, c.source, c.slot) for c in terms))
            if key not in known:
                known[key] = len(plan.states)
                plan.states.append(State(node, [], tuple(terms)))
            plan.states[known[key]].tasks.append(task)
            plan.state_of[(name, task)] = known[key]
    per_node: dict[str, int] = {}
    for state in plan.states[1:]:
        per_node[state.node.name] = per_node.get(state.node.name, 0) + 1
    for state in plan.states[1:]:
        state.suffix = f"_{state.tasks[0]}" if per_node[state.node.name] > 1 else ""
    return plan


# -- lowering -------------------------------------------------------------------------------------
FUSE_EDGES_DEFAULT = True  # measured (benchmarks/supernet_step.py, CPU): a fused search step takes 0.83-1.00x the
# time of an unfused one from N = 8 to N = 32 nodes, a warm-up step 0.77-0.91x (benchmarks/results/supernet-step.txt)


def lower_supernet(ir: IR, *, dtype: torch.dtype = torch.float32, batched: bool = True,
                   fuse_edges: bool | None = None) -> fx.GraphModule:
    """The supernet of `ir`: `module(x) -> {task: output}`, with a `gates` GateTable submodule.

    `batched` stacks the tasks' states along the batch dimension so each edge op runs once per node
    (the default); `batched=False` lowers one call per edge and task state. `fuse_edges` (batched
    only; default `FUSE_EDGES_DEFAULT`) runs edges with the same source and op as one wider layer.
    Both choices compute the same function in eval mode and share submodule names and state-dict
    keys. Needs every edge to have an op (run `legalize-types` first). The module is built on the
    CPU in `dtype`; move it with `.to(device)`.
    """
    missing = [e.name for e in ir.edges.values() if e.op is None and e.active_tasks()]
    if missing:
        raise ValueError(f"edges without an op (run legalize-types first): {', '.join(missing)}")
    reached = plan_states(ir, {}, gated=False).state_of
    for task in ir.task_names:
        if (ir.head_of(task).name, task) not in reached:
            raise ValueError(f"task {task!r} has no path to its head on edges active for it")
    root = nn.Module()
    root.gates = GateTable(ir, dtype=dtype)
    if not batched:
        return _lower_per_task(ir, root, dtype)
    fuse = FUSE_EDGES_DEFAULT if fuse_edges is None else fuse_edges
    gated = _BatchedGraph(ir, root, plan_states(ir, root.gates.slots), gated=True, fuse_edges=fuse)
    warmup = _BatchedGraph(ir, root, plan_states(ir, root.gates.slots, gated=False), gated=False,
                           fuse_edges=fuse)
    root.to(dtype)
    gated.graph.set_codegen(_WarmupDispatch())
    module = _graph_module(Supernet, root, gated.graph, "Supernet")
    object.__setattr__(module, "warmup_module", _graph_module(fx.GraphModule, root, warmup.graph, "SupernetWarmup"))
    from .torch_sampled import SampledForward
    object.__setattr__(module, "sampled_forward", SampledForward(ir, module))
    module.aggregation_slots = gated.aggregation_slots
    graphs = (("search", gated), ("warmup", warmup))
    module.rewrites = {"fuse-edges": {name: [[edge.name for edge in members] for members in built.fusion]
                                      for name, built in graphs},
                       "fuse-sums": {name: built.sums for name, built in graphs}}
    return module


def _graph_module(cls: type, root: nn.Module, graph: fx.Graph, class_name: str) -> fx.GraphModule:
    """A GraphModule whose top-level children are `root`'s own (fx would copy only the attributes
    the graph touches, e.g. just `edge_h1_h2.bn` of a fused edge); every graph shares them."""
    graph.lint()
    module = cls(root, graph, class_name=class_name)
    for name, child in root.named_children():
        setattr(module, name, child)
    module.recompile()
    return module


class Supernet(fx.GraphModule):
    """The generated supernet; in "ones" mode `forward` runs `warmup_module`, the same submodules
    planned without gates (each state the tasks share computed once); in "fixed" mode, only the
    sampled network, each distinct state once (`backends.torch_sampled`; `distinct_states = False`
    runs fixed gates through the task-batched graph instead, for comparison)."""

    distinct_states = True

    def forward_ones(self, x: Tensor) -> Any:
        return self.__dict__["warmup_module"](x)

    def forward_fixed(self, x: Tensor) -> Any:
        return self.__dict__["sampled_forward"](x)


class _WarmupDispatch(fx.graph.CodeGen):
    """Generated code that starts with the switch to the warm-up graph."""

    def gen_fn_def(self, free_vars: list[str], maybe_return_annotation: str, **kwargs: Any) -> str:
        return super().gen_fn_def(free_vars, maybe_return_annotation, **kwargs) + (
            "\n    if self.gates.mode == 'ones':  # warm-up: states the tasks share are computed once"
            "\n        return self.forward_ones(x)"
            "\n    if self.gates.mode == 'fixed' and self.distinct_states:  # a sample: its edges, each state once"
            "\n        return self.forward_fixed(x)")


def _needed_states(ir: IR, plan: Plan) -> set[int]:
    """The states some head reads, directly or through other states (the rest is dead code)."""
    needed = {plan.state_of[(ir.head_of(task).name, task)] for task in ir.task_names}
    for index in range(len(plan.states) - 1, 0, -1):
        if index in needed:
            needed.update(term.source for term in plan.states[index].contributions)
    needed.add(0)
    return needed



def fuse_edges_rewrite(edges: dict[str, Edge], reads: dict[str, tuple[int, ...]]) -> list[list[Edge]]:
    """The `fuse-edges` rewrite: the groups of edges that run as one wider layer, each group the
    edges with the same source, reading the same stacked states, with the same fusable op
    (`_fusion_key`). `lower_supernet` records the groups of each graph in `module.rewrites`, which
    `dagir run` dumps to `supernet.rewrites.json`."""
    groups: dict[tuple, list[Edge]] = {}
    for name, edge in edges.items():
        key = _fusion_key(edge)
        if key is not None:
            groups.setdefault((edge.src, reads[name], key), []).append(edge)
    return [members for members in groups.values() if len(members) > 1]


def _fusion_key(edge: Edge) -> tuple | None:
    p = edge.op.params
    if edge.op.name == "conv_bn_relu":
        return ("conv", int(p["c_in"]), int(p.get("kernel", 3)), int(p.get("stride", 1)))
    if edge.op.name == "pool_conv_bn_relu":
        return ("pool_conv", int(p["c_in"]), int(p.get("stride", 1)))
    if edge.op.name == "linear_relu":
        return ("linear_relu", int(p["d_in"]))
    return None


def summable_linears(edges: list[Edge], fused: dict[str, list[Edge]]) -> bool:
    """Whether a node's summed edges can run as one linear layer (`fuse-sums`): two or more
    `linear` / `pool_linear` edges, none already fused with others of its source."""
    return len(edges) > 1 and all(edge.op.name in ("linear", "pool_linear") and edge.name not in fused
                                  for edge in edges)


class _BatchedGraph:
    """Builds the task-batched graph of one plan: a node's K states as one `[K·B, ...]` tensor."""

    def __init__(self, ir: IR, root: nn.Module, plan: Plan, *, gated: bool, fuse_edges: bool) -> None:
        self.ir, self.root, self.plan, self.gated = ir, root, plan, gated
        self.graph = fx.Graph()
        self.aggregation_slots: dict[str, dict[str, Any]] = {}
        needed = _needed_states(ir, plan)
        self.blocks: dict[str, list[int]] = {}
        for index in sorted(needed):
            self.blocks.setdefault(plan.states[index].node.name, []).append(index)
        self.position = {index: blocks.index(index) for blocks in self.blocks.values() for index in blocks}
        # each edge has one destination, so it runs once, on the source states its terms read
        self.reads: dict[str, tuple[int, ...]] = {}
        edges: dict[str, Edge] = {}
        for index in needed:
            for term in plan.states[index].contributions:
                reads = set(self.reads.get(term.edge.name, ())) | {self.position[term.source]}
                self.reads[term.edge.name] = tuple(sorted(reads))
                edges[term.edge.name] = term.edge
        self.fuse_edges = fuse_edges
        self.fusion = fuse_edges_rewrite(edges, self.reads) if fuse_edges else []
        self.sums: list[list[str]] = []  # the fuse-sums rewrite: the edges of each node summed as one layer
        self.fused: dict[str, list[Edge]] = {edge.name: members for members in self.fusion for edge in members}
        self.values: dict[str, fx.Node] = {}
        self.inputs: dict[tuple[str, tuple[int, ...]], fx.Node] = {}
        self.outputs: dict[str, fx.Node] = {}
        self.stacked: dict[fx.Node, fx.Node] = {}
        self._gates: fx.Node | None = None
        self.gate_of: dict[str, fx.Node] = {}  # an edge's gate per destination state (a gate node masks 0s)
        self._table: fx.Node | None = None
        self.slot_task = {slot: task for (_, task), slot in root.gates.slots.items()}
        self._build()

    # -- helpers ------------------------------------------------------------------------------
    def call(self, op: str, target: Any, args: tuple, kwargs: dict | None = None, name: str | None = None) -> fx.Node:
        return self.graph.create_node(op, target, args, kwargs, name=name)

    def module(self, name: str, build) -> str:
        if not hasattr(self.root, name):
            self.root.add_module(name, build())
        return name

    def gates(self) -> fx.Node:
        if self._gates is None:
            self._gates = self.call("call_module", "gates", ())
        return self._gates

    def gate_table(self) -> tuple[fx.Node, int, int]:
        """Every gate, then a 1 and a 0: one index per state picks its gate (or 1, or 0)."""
        if self._table is None:
            if self.gated:
                gates = self.gates()
                ones_zeros = self.call("call_method", "new_tensor", (gates, [1.0, 0.0]))
                self._table = self.call("call_function", torch.cat, ([gates, ones_zeros],), name="gate_table")
            else:
                self._table = self.call("call_method", "new_tensor", (self.values["input"], [1.0, 0.0]),
                                        name="gate_table")
        offset = len(self.root.gates.entries) if self.gated else 0
        return self._table, offset, offset + 1

    def table_index(self, term: Contribution | None) -> int:
        """A state's index into `gate_table()`: its gate slot, the 1 of an ungated edge, or the 0 of an absent one."""
        _, one, zero = self.gate_table()
        return zero if term is None else one if term.slot is None else term.slot

    def blocks_of(self, value: fx.Node, count: int) -> fx.Node:
        """`[K·B, ...]` as `[K, B, ...]` (one view per value)."""
        if value not in self.stacked:
            self.stacked[value] = self.call("call_method", "unflatten", (value, 0, (count, -1)))
        return self.stacked[value]

    def edge_input(self, edge: Edge) -> fx.Node:
        """The stacked source states `edge` reads."""
        source, reads = self.ir.nodes[edge.src].name, self.reads[edge.name]
        count = len(self.blocks[source])
        if reads == tuple(range(count)):
            return self.values[source]
        key = (source, reads)
        if key not in self.inputs:
            stacked = self.blocks_of(self.values[source], count)
            if len(reads) == 1:
                self.inputs[key] = self.call("call_function", operator.getitem, (stacked, reads[0]))
            else:
                contiguous = reads == tuple(range(reads[0], reads[-1] + 1))
                index = slice(reads[0], reads[-1] + 1) if contiguous else list(reads)
                chosen = self.call("call_function", operator.getitem, (stacked, index))
                self.inputs[key] = self.call("call_method", "flatten", (chosen, 0, 1))
        return self.inputs[key]

    def edge_output(self, edge: Edge, name: str | None = None) -> fx.Node:
        if edge.name not in self.outputs:
            if edge.name in self.fused:
                self.fused_outputs(self.fused[edge.name])
            else:
                self.module(edge.name, lambda: build_op(edge.op))
                self.outputs[edge.name] = self.call("call_module", edge.name, (self.edge_input(edge),),
                                                    name=name or edge.name)
        return self.outputs[edge.name]

    def fused_outputs(self, members: list[Edge]) -> None:
        """One wide layer for edges with the same input and op, split, then each edge's BN/ReLU."""
        for edge in members:
            self.module(edge.name, lambda edge=edge: build_op(edge.op))
        first, params = members[0], members[0].op.params
        value = self.edge_input(first)
        layer = "linear" if first.op.name == "linear_relu" else "conv"
        weights = [self.call("get_attr", f"{edge.name}.{layer}.weight", ()) for edge in members]
        weight = self.call("call_function", torch.cat, (weights,))
        widths = [int(edge.op.params["d_out" if layer == "linear" else "c_out"]) for edge in members]
        if layer == "linear":
            biases = [self.call("get_attr", f"{edge.name}.linear.bias", ()) for edge in members]
            bias = self.call("call_function", torch.cat, (biases,))
            wide = self.call("call_function", torch.nn.functional.linear, (value, weight, bias))
        else:
            stride, kernel = int(params.get("stride", 1)), int(params.get("kernel", 3))
            if first.op.name == "pool_conv_bn_relu":
                if stride > 1:
                    value = self.call("call_module", f"{first.name}.pool", (value,))
                stride, kernel = 1, 1
            wide = self.call("call_function", torch.conv2d, (value, weight, None, stride, kernel // 2))
        if layer == "linear":  # ReLU is elementwise: once on the wide output
            wide = self.call("call_module", f"{first.name}.relu", (wide,))
        parts = self.call("call_function", torch.split, (wide, widths, 1),
                          name="fused_" + "_".join(edge.name[len("edge_"):] for edge in members))
        for position, edge in enumerate(members):
            part = self.call("call_function", operator.getitem, (parts, position),
                             name=edge.name if layer == "linear" else None)
            if layer == "conv":  # a channel slice of the wide output: contiguous, BN's kernels run faster
                part = self.call("call_method", "contiguous", (part,))
                part = self.call("call_module", f"{edge.name}.bn", (part,))
                part = self.call("call_module", f"{edge.name}.relu", (part,), name=edge.name)
            self.outputs[edge.name] = part

    def term(self, edge: Edge, output: fx.Node, per_state: list[Contribution | None],
             width: int) -> tuple[fx.Node, int]:
        """The gated term of `edge` for the K states of its destination: `(value, leading)`, with
        `value` flat `[B, ...]` when K = 1, else `[leading, B, ...]` (leading 1: the same for all)."""
        count = len(per_state)
        if count == 1:
            slot = per_state[0].slot
            if slot is None:
                return output, 1
            suffix = f"{edge.name}_{self.slot_task[slot]}"
            gate = self.call("call_function", operator.getitem, (self.gates(), slot), name=f"gate_{suffix}")
            self.gate_of[edge.name] = gate
            return self.call("call_function", operator.mul, (output, gate), name=f"gated_{suffix}"), 1
        value, leading = self.ungated_term(edge, output, per_state)
        if all(c is not None and c.slot is None for c in per_state):
            return value, leading
        table = self.gate_table()[0]
        gate = self.call("call_function", operator.getitem, (table, [self.table_index(c) for c in per_state]))
        self.gate_of[edge.name] = gate  # [K]: the gate of each state, 0 where the edge is absent
        gate = self.call("call_method", "view", (gate, (count,) + (1,) * width), name=f"gate_{edge.name}")
        return self.call("call_function", operator.mul, (value, gate), name=f"gated_{edge.name}"), count

    def ungated_term(self, edge: Edge, output: fx.Node, per_state: list[Contribution | None]) -> tuple[fx.Node, int]:
        """`edge`'s output for the K states of its destination as `[leading, B, ...]`, before its gates
        (leading 1: one source state, the same for all)."""
        reads = self.reads[edge.name]
        if len(reads) == 1:
            return self.call("call_method", "unsqueeze", (output, 0)), 1
        value = self.blocks_of(output, len(reads))
        index = [reads.index(self.position[c.source]) if c is not None else 0 for c in per_state]
        if index != list(range(len(reads))):
            value = self.call("call_function", operator.getitem, (value, index))
        return value, len(per_state)

    def folds_gates(self, node: Node, in_edges: list[Edge], per_edge: dict[str, list[Contribution | None]],
                    count: int) -> bool:
        """Whether a `gate`, `mix` or `nddr` node takes its inputs ungated and applies the gates itself
        (`gated_forward`): in the gated graph, where every state sees the same inputs (one call; an
        `nddr` node: on images, with one state) and some input is gated."""
        if not self.gated or node.aggregation not in SOFTMAX_AGGREGATIONS + ("nddr",):
            return False
        if node.aggregation == "nddr" and (count > 1 or not node.type.is_image):  # where it is faster (measured)
            return False
        if len(self.state_groups(node, self.presence(in_edges, per_edge, count))) > 1:
            return False
        return any(c is not None and c.slot is not None for edge in in_edges for c in per_edge.get(edge.name, ()))

    def folded_aggregate(self, node: Node, in_edges: list[Edge], per_edge: dict[str, list[Contribution | None]],
                         count: int, name: str) -> fx.Node:
        """A `gate`, `mix` or `nddr` node's one call on its ungated inputs and the `[K, k]` gates of its states (one lookup)."""
        module_name = self.module(aggregation_module_name(node),
                                  lambda: node_aggregation(node, in_edges, self.ir.input_node().type))
        blocks = []
        for edge in in_edges:
            if edge.name not in per_edge:
                blocks.append(None)
                continue
            output = self.edge_output(edge)
            blocks.append(self.call("call_method", "unsqueeze", (output, 0)) if count == 1
                          else self.ungated_term(edge, output, per_edge[edge.name])[0])
        index = [self.table_index(per_edge[edge.name][k] if edge.name in per_edge else None)
                 for k in range(count) for edge in in_edges]
        gates = self.call("call_function", operator.getitem, (self.gate_table()[0], index))
        gates = self.call("call_method", "view", (gates, (count, len(in_edges))), name=f"gates_{node.name}")
        query = (self.input_query(count),) if node.query == "input" else ()
        aggregation = self.call("get_attr", module_name, ())
        return self.call("call_method", "gated_forward", (aggregation, blocks, gates, *query), name=name)

    @staticmethod
    def presence(in_edges: list[Edge], per_edge: dict[str, list[Contribution | None]],
                 count: int) -> list[tuple[bool, ...]]:
        """Per state of the node, which of its in-edges it has."""
        return [tuple(edge.name in per_edge and per_edge[edge.name][k] is not None for edge in in_edges)
                for k in range(count)]

    @staticmethod
    def state_groups(node: Node, masks: list[tuple[bool, ...]]) -> list[list[int]]:
        """The node's states (`masks`: their `presence`) in groups of one aggregation call each: all in
        one, but for a softmax aggregation, which masks absent inputs out, one group per set of inputs present."""
        if node.aggregation not in SOFTMAX_AGGREGATIONS:
            return [list(range(len(masks)))]
        return [[k for k, own in enumerate(masks) if own == mask] for mask in dict.fromkeys(masks)]

    def with_gates(self, node: Node, slots: list, in_edges: list[Edge], group: list[int] | None,
                   count: int) -> tuple:
        """A `gate` aggregation's call arguments: its slots; where an edge is gated, the gate of
        each state the call computes (`group`: those states; None: all `count`), so a gate of 0
        takes the edge out of the softmax; and, for `query="input"`, the network input once per
        state. Other aggregations take the slots alone."""
        if node.aggregation not in SOFTMAX_AGGREGATIONS:
            return (slots,)
        gates = None
        if any(edge.name in self.gate_of for edge in in_edges):
            gates = []
            for slot, edge in zip(slots, in_edges):
                gate = self.gate_of.get(edge.name) if slot is not None else None
                if gate is not None and group is not None:
                    gate = self.call("call_function", operator.getitem, (gate, group[0] if len(group) == 1 else group))
                gates.append(gate)
        if node.query != "input":
            return (slots,) if gates is None else (slots, gates)
        return (slots, gates, self.input_query(count if group is None else len(group)))

    def input_query(self, states: int) -> fx.Node:
        """The network input once per state, `[states·B, ...]` (the query of `query: input`)."""
        query = self.values["input"]
        if states > 1:
            width = len(self.ir.input_node().type.shape) + 1
            query = self.flatten(self.call("call_method", "unsqueeze", (query, 0)), 1, states, width)
        return query

    def flatten(self, value: fx.Node, leading: int, count: int, width: int, name: str | None = None) -> fx.Node:
        """A `[leading, B, ...]` term for `count` states as one `[count·B, ...]` tensor."""
        if leading == 1 and count > 1:
            value = self.call("call_method", "expand", (value, (count,) + (-1,) * width))
        return self.call("call_method", "flatten", (value, 0, 1), name=name)

    def slot_value(self, term: tuple[fx.Node, int], count: int, width: int) -> fx.Node:
        return term[0] if count == 1 else self.flatten(*term, count, width)

    # -- the graph ----------------------------------------------------------------------------
    def _build(self) -> None:
        ir, plan = self.ir, self.plan
        incoming = ir.in_edges()
        self.values["input"] = x = self.graph.placeholder("x")
        self.values[ir.input_node().name] = x
        for name, states in self.blocks.items():
            node = ir.nodes[name]
            if node.kind == "input":
                continue
            count = len(states)
            per_edge: dict[str, list[Contribution | None]] = {}
            for k, index in enumerate(states):
                for term in plan.states[index].contributions:
                    per_edge.setdefault(term.edge.name, [None] * count)[k] = term
            edges = [edge for edge in incoming[name] if edge.name in per_edge]
            width = len(node.input_type.shape) + 1  # batch and sample dimensions of a term
            sole = (count == 1 and len(edges) == 1 and node.aggregation == "sum" and node.op is None
                    and per_edge[edges[0].name][0].slot is None and edges[0].name not in self.fused)
            aggregate_name = name + "_in" if node.op is not None else name
            summed_as_one = (self.fuse_edges and count == 1 and node.aggregation == "sum"
                             and summable_linears(edges, self.fused))
            folded = not summed_as_one and self.folds_gates(node, incoming[name], per_edge, count)
            terms = {} if summed_as_one or folded else {
                edge.name: self.term(edge, self.edge_output(edge, name if sole else None), per_edge[edge.name], width)
                for edge in edges}
            if folded:
                self.record_slots(node, incoming[name], per_edge, count)
                value = self.folded_aggregate(node, incoming[name], per_edge, count, aggregate_name)
            elif summed_as_one:
                value = self.linear_sum(edges, per_edge, aggregate_name)
            elif node.aggregation == "sum":
                value, leading = None, 1
                for position, (term, term_leading) in enumerate(terms.values(), start=1):
                    last = position == len(terms) and count == 1
                    value = term if value is None else self.call(
                        "call_function", operator.add, (value, term), name=aggregate_name if last else None)
                    leading = max(leading, term_leading)
                if count > 1:
                    value = self.flatten(value, leading, count, width, name=aggregate_name)
            else:
                value = self.aggregate(node, incoming[name], per_edge, terms, count, width, aggregate_name)
            if node.op is not None:
                module_name = self.module(node_op_module_name(node), lambda: build_op(node.op))
                value = self.call("call_module", module_name, (value,), name=name)
            self.values[name] = value
        self.graph.output({task: self.values[ir.head_of(task).name] for task in ir.task_names})

    def linear_sum(self, edges: list[Edge], per_edge: dict[str, list[Contribution | None]], name: str) -> fx.Node:
        """The `fuse-sums` rewrite of one node: its summed linear edges as one linear layer."""
        self.sums.append([edge.name for edge in edges])
        terms = [per_edge[edge.name][0] for edge in edges]
        gates = None  # every edge's gate, 1 for an ungated one: one lookup, read by the weight and the bias
        if any(term.slot is not None for term in terms):
            gates = self.call("call_function", operator.getitem,
                              (self.gate_table()[0], [self.table_index(term) for term in terms]))
        inputs, weights, biases, widths = [], [], [], []
        for edge in edges:
            self.module(edge.name, lambda edge=edge: build_op(edge.op))
            value, layer = self.edge_input(edge), edge.name
            if edge.op.name == "pool_linear":
                value = self.call("call_module", f"{edge.name}.pool", (value,))
                value = self.call("call_module", f"{edge.name}.flatten", (value,))
                layer = f"{edge.name}.linear"
            inputs.append(value)
            weights.append(self.call("get_attr", f"{layer}.weight", ()))
            biases.append(self.call("get_attr", f"{layer}.bias", ()))
            widths.append(self.root.get_submodule(layer).in_features)
        joined = self.call("call_function", torch.cat, (inputs, 1))
        weight = self.call("call_function", torch.cat, (weights, 1))
        stacked_biases = self.call("call_function", torch.stack, (biases,))
        if gates is None:
            bias = self.call("call_method", "sum", (stacked_biases, 0))
        else:  # each input's gate scales its columns of the weight: one small product, not one per input
            repeats = self.call("call_method", "new_tensor", (gates, widths), {"dtype": torch.long})
            gate_columns = self.call("call_method", "repeat_interleave", (gates, repeats),
                                     {"output_size": sum(widths)}, name=f"gate_columns_{name}")
            weight = self.call("call_function", operator.mul, (weight, gate_columns))
            bias = self.call("call_function", torch.matmul, (gates, stacked_biases))
        return self.call("call_function", torch.nn.functional.linear, (joined, weight, bias), name=name)

    def record_slots(self, node: Node, in_edges: list[Edge], per_edge: dict[str, list[Contribution | None]],
                     count: int) -> list[tuple[bool, ...]]:
        """Note the node's slots and the inputs each of its calls sees (`module.aggregation_slots`);
        returns, per state, which inputs it has."""
        masks = self.presence(in_edges, per_edge, count)
        self.aggregation_slots[node.name] = {"slots": [edge.name for edge in in_edges],
                                             "calls": sorted({tuple(i for i, p in enumerate(m) if p) for m in masks})}
        return masks

    def aggregate(self, node: Node, in_edges: list[Edge], per_edge: dict[str, list[Contribution | None]],
                  terms: dict[str, tuple[fx.Node, int]], count: int, width: int, name: str) -> fx.Node:
        module_name = self.module(aggregation_module_name(node),
                                  lambda: node_aggregation(node, in_edges, self.ir.input_node().type))
        masks = self.record_slots(node, in_edges, per_edge, count)
        # nddr fills an absent input with zeros, which is what a 0 gate gives: one call for all states.
        # gate masks absent inputs out of its softmax: one call per group of states with the same inputs.
        groups = self.state_groups(node, masks)
        if len(groups) == 1:
            slots = [self.slot_value(terms[edge.name], count, width) if edge.name in terms else None
                     for edge in in_edges]
            return self.call("call_module", module_name, self.with_gates(node, slots, in_edges, None, count), name=name)
        results = []
        for group in groups:
            slots = []
            for i, edge in enumerate(in_edges):
                if not masks[group[0]][i]:
                    slots.append(None)
                    continue
                value, leading = terms[edge.name]
                if len(group) == 1:
                    slots.append(self.call("call_function", operator.getitem, (value, group[0] if leading > 1 else 0)))
                    continue
                if leading > 1:
                    value = self.call("call_function", operator.getitem, (value, group))
                slots.append(self.flatten(value, 1 if leading == 1 else len(group), len(group), width))
            results.append(self.call("call_module", module_name, self.with_gates(node, slots, in_edges, group, count)))
        order = [k for group in groups for k in group]
        joined = self.call("call_function", torch.cat, (results,), name=name if order == sorted(order) else None)
        if order == sorted(order):
            return joined
        restore = [order.index(k) for k in range(count)]
        chosen = self.call("call_function", operator.getitem, (self.blocks_of(joined, count), restore))
        return self.call("call_method", "flatten", (chosen, 0, 1), name=name)


def _lower_per_task(ir: IR, root: nn.Module, dtype: torch.dtype) -> fx.GraphModule:
    """One call per edge and source state, one term per task state (the lowering before batching)."""
    plan = plan_states(ir, root.gates.slots)
    incoming = ir.in_edges()
    graph = fx.Graph()
    values: dict[int, fx.Node] = {0: graph.placeholder("x")}
    edge_outputs: dict[tuple[str, int], fx.Node] = {}
    gates = graph.call_module("gates", ()) if root.gates.entries else None
    slot_task = {slot: task for (_, task), slot in root.gates.slots.items()}

    def edge_output(edge: Edge, source: int, name: str | None) -> fx.Node:
        key = (edge.name, source)
        if key not in edge_outputs:
            if not hasattr(root, edge.name):
                root.add_module(edge.name, build_op(edge.op))
            edge_outputs[key] = graph.create_node("call_module", edge.name, (values[source],),
                                                  name=name or edge.name + plan.states[source].suffix)
        return edge_outputs[key]

    for index, state in enumerate(plan.states[1:], start=1):
        node = state.node
        # A state that is one ungated edge's output (the stem) is named after the state itself.
        is_edge_output = (len(state.contributions) == 1 and state.contributions[0].slot is None
                          and node.aggregation == "sum" and node.op is None)
        terms, gate_of = [], {}
        for term in state.contributions:
            output = edge_output(term.edge, term.source, state.name if is_edge_output else None)
            if term.slot is not None:
                suffix = f"{term.edge.name}_{slot_task[term.slot]}"
                gate = graph.create_node("call_function", operator.getitem, (gates, term.slot),
                                         name=f"gate_{suffix}")
                gate_of[term.edge.name] = gate
                output = graph.create_node("call_function", operator.mul, (output, gate),
                                           name=f"gated_{suffix}")
            terms.append((term.edge.name, output))
        aggregate_name = state.name + "_in" if node.op is not None else state.name
        if node.aggregation == "sum":
            value = terms[0][1]
            for position, (_, output) in enumerate(terms[1:], start=2):
                value = graph.create_node("call_function", operator.add, (value, output),
                                          name=aggregate_name if position == len(terms) else None)
        else:
            module_name = aggregation_module_name(node)
            if not hasattr(root, module_name):
                root.add_module(module_name, node_aggregation(node, incoming[node.name], ir.input_node().type))
            by_edge = dict(terms)
            slots_in = [by_edge.get(edge.name) for edge in incoming[node.name]]
            arguments: tuple = (slots_in,)
            if node.aggregation in SOFTMAX_AGGREGATIONS:  # a gate of 0 takes its edge out of the softmax
                gates_in = [gate_of.get(edge.name) for edge in incoming[node.name]] if gate_of else None
                arguments = (slots_in, gates_in, values[0]) if node.query == "input" else (
                    (slots_in,) if gates_in is None else (slots_in, gates_in))
            value = graph.create_node("call_module", module_name, arguments, name=aggregate_name)
        values[index] = apply_node_op(graph, root, node, value, state.name)

    outputs = {task: values[plan.state_of[(ir.head_of(task).name, task)]] for task in ir.task_names}
    graph.output(outputs)
    root.to(dtype)
    module = fx.GraphModule(root, graph, class_name="Supernet")
    module.graph.eliminate_dead_code()  # states no head reads (off every kept path) are not computed
    module.delete_all_unused_submodules()
    module.gates = root.gates  # kept even when no edge is gated, so the helpers below always work
    module.graph.lint()
    module.recompile()
    calls: dict[str, set[tuple[int, ...]]] = {}
    for call in module.graph.nodes:
        if call.op == "call_module" and str(call.target).startswith("node_"):
            calls.setdefault(str(call.target)[len("node_"):], set()).add(
                tuple(i for i, value in enumerate(call.args[0]) if value is not None))
    module.aggregation_slots = {name: {"slots": [edge.name for edge in incoming[name]], "calls": sorted(masks)}
                                for name, masks in calls.items()}
    return module


# -- gates back into the IR, parameter groups -----------------------------------------------------
def import_gates_from_module(module: nn.Module, ir: IR) -> IR:
    """A new IR whose decisions carry the module's trained logits; `ir` is left unchanged."""
    return import_logits(module.gates, ir)


def _children_parameters(module: nn.Module, prefixes: tuple[str, ...]) -> list[nn.Parameter]:
    return [p for name, child in module.named_children() if name.startswith(prefixes)
            for p in child.parameters()]


def gate_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The architecture parameters (A, B, Γ, cross, routes): what the search trains."""
    return list(module.gates.parameters())


def weight_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Θ: the edge ops, the node aggregations and any non-head node op."""
    return _children_parameters(module, ("edge_", "node_", "op_"))


def head_parameters(module: nn.Module) -> list[nn.Parameter]:
    return _children_parameters(module, ("head_",))


def count_parameters(module: nn.Module | Iterable[nn.Parameter]) -> int:
    """Number of scalars in a module's parameters (or in a list of parameters), each counted once."""
    parameters = module.parameters() if isinstance(module, nn.Module) else module
    unique = {id(p): p for p in parameters}
    return sum(p.numel() for p in unique.values())
