"""The verifier: the IR's invariants, checked between passes.

1. `structure`: acyclic, every edge's endpoints exist, names unique, one input, one head per task,
   every node's owner (`Node.task`) a known task, and no edge into a node owned by task B active for
   another task (B's state is computed with B's edges only);
2. `types`: every edge op maps its source's type to its destination's input type, every node op
   maps its input type to its type (edges may lack an op only before `legalize-types`);
3. `task-paths`: every task has a path input -> stem -> ... -> its head on edges active for it (a
   stem on one of its input-to-head paths, not merely reached);
4. `flow-restriction`: every internal edge h_i -> h_j has 1 <= j - i <= max_span;
5. `reduced`: after reduction, no node lies off every task's kept paths and no edge is kept for no task;
6. `decisions`: every decision governs edges that exist and serve its tasks, no edge has two
   decisions, a bernoulli has one edge and one logit, a categorical K >= 2 options and K logits,
   every logit is finite; after `discretize`, every task has its choice and the edges kept for it
   are exactly the chosen options' (a subset, once a reduction has removed more).

A violation raises `VerificationError` naming the invariant and the offending nodes.
"""
from __future__ import annotations

from .errors import VerificationError
import math

from .ir import AGGREGATIONS, DECISION_KINDS, DECISION_SCOPES, EDGE_KINDS, IR, NODE_KINDS, SHARED, Decision
from .ops import OpTypeError, output_type
from .task_states import nodes_on_paths, reached_nodes, reaching_nodes

INVARIANTS = ("structure", "types", "task-paths", "flow-restriction", "reduced", "decisions")


def verify(ir: IR) -> None:
    """Check every invariant of `ir`; raise `VerificationError` on the first one broken."""
    check_structure(ir)
    check_types(ir)
    check_task_paths(ir)
    check_flow_restriction(ir)
    check_decisions(ir)
    if ir.reduced:
        check_reduced(ir)


def check_structure(ir: IR) -> None:
    def fail(message: str, offending: list[str]) -> VerificationError:
        return VerificationError("structure", message, offending=offending)

    for name, node in ir.nodes.items():
        if node.name != name:
            raise fail(f"node stored under {name!r} is named {node.name!r}", [name])
        if node.kind not in NODE_KINDS or node.aggregation not in AGGREGATIONS:
            raise fail(f"node {name!r} has unknown kind or aggregation", [name])
        if node.query == "task" and node.task is None:  # a shared state cannot depend on the task
            raise fail(f"node {name!r} gates on its task (query='task') but serves no single task", [name])
    task_names = ir.task_names
    if len(set(task_names)) != len(task_names):
        raise fail("task names are not unique", task_names)
    inputs = ir.nodes_of_kind("input")
    if len(inputs) != 1:
        raise fail(f"expected one input node, found {len(inputs)}", [n.name for n in inputs])
    heads = ir.nodes_of_kind("head")
    head_tasks = [h.task for h in heads]
    missing = [t for t in task_names if t not in head_tasks]
    extra = [h.name for h in heads if head_tasks.count(h.task) > 1 or h.task not in task_names]
    if missing or extra:
        raise fail("every task needs exactly one head", missing + extra)
    unowned = [n.name for n in ir.nodes.values() if n.task is not None and n.task not in task_names]
    if unowned:
        raise fail(f"nodes owned by unknown tasks: {unowned}", unowned)
    for (src, dst), edge in ir.edges.items():
        if (edge.src, edge.dst) != (src, dst):
            raise fail(f"edge stored under {src}->{dst} connects {edge.src}->{edge.dst}", [src, dst])
        dangling = [n for n in (src, dst) if n not in ir.nodes]
        if dangling:
            raise fail(f"edge {src} -> {dst} has an endpoint that does not exist", dangling)
        if edge.kind not in EDGE_KINDS:
            raise fail(f"edge {src} -> {dst} has unknown kind {edge.kind!r}", [src, dst])
        unknown = [t for t in edge.tasks if t not in task_names]
        if unknown:
            raise fail(f"edge {src} -> {dst} serves unknown tasks {unknown}", [src, dst])
        if src == dst:
            raise fail(f"self-loop on {src}", [src])
        owner = ir.nodes[dst].task
        foreign = [t for t in edge.active_tasks() if owner is not None and t != owner]
        if foreign:
            raise fail(f"edge {src} -> {dst} into {owner!r}'s node is active for other tasks {foreign}",
                       [src, dst])
    cycle = _find_cycle(ir)
    if cycle:
        raise fail("the graph has a cycle", cycle)


def _find_cycle(ir: IR) -> list[str]:
    """Kahn's algorithm; returns the nodes left on cycles (empty when acyclic)."""
    indegree = {name: 0 for name in ir.nodes}
    outgoing: dict[str, list[str]] = {name: [] for name in ir.nodes}
    for src, dst in ir.edges:
        indegree[dst] += 1
        outgoing[src].append(dst)
    ready = [n for n, d in indegree.items() if d == 0]
    seen = 0
    while ready:
        node = ready.pop()
        seen += 1
        for nxt in outgoing[node]:
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                ready.append(nxt)
    return [] if seen == len(indegree) else sorted(n for n, d in indegree.items() if d > 0)


def check_types(ir: IR) -> None:
    for node in ir.nodes.values():
        if node.op is None:
            if node.in_type is not None and node.in_type != node.type:
                raise VerificationError("types", f"node {node.name} has input type {node.in_type} but "
                                        f"type {node.type} and no op between them", offending=[node.name])
            continue
        try:
            produced = output_type(node.op, node.input_type)
        except OpTypeError as err:
            raise VerificationError("types", f"node {node.name}: {err}", offending=[node.name]) from None
        if produced != node.type:
            raise VerificationError("types", f"node {node.name}: op {node.op} makes {produced} from "
                                    f"{node.input_type}, but the node's type is {node.type}",
                                    offending=[node.name])
    for edge in ir.edges.values():
        src, dst = ir.nodes[edge.src], ir.nodes[edge.dst]
        if edge.op is None:
            if ir.types_legal:
                raise VerificationError("types", f"edge {edge.src} -> {edge.dst} has no op after "
                                        "type legalisation", offending=[edge.src, edge.dst])
            continue
        try:
            produced = output_type(edge.op, src.type)
        except OpTypeError as err:
            raise VerificationError("types", f"edge {edge.src} -> {edge.dst}: {err}",
                                    offending=[edge.src, edge.dst]) from None
        if produced != dst.input_type:
            raise VerificationError("types", f"edge {edge.src} -> {edge.dst}: op {edge.op} makes "
                                    f"{produced} from {src.type}, but {edge.dst} takes {dst.input_type}",
                                    offending=[edge.src, edge.dst])


def check_task_paths(ir: IR) -> None:
    outgoing, incoming = ir.out_edges(), ir.in_edges()
    stems = {n.name for n in ir.nodes_of_kind("stem")}
    for task in ir.task_names:
        reached = reached_nodes(ir, task, outgoing)
        head = ir.head_of(task).name
        if head not in reached:
            raise VerificationError("task-paths", f"task {task!r} has no path from the input to its "
                                    "head on edges active for it", offending=[head])
        # a stem reached on a dead end does not count: it must lie on an input-to-head path
        if stems and not (stems & reached & reaching_nodes(ir, task, incoming)):
            raise VerificationError("task-paths", f"task {task!r} reaches its head on no path through a stem",
                                    offending=sorted(stems))


def check_flow_restriction(ir: IR) -> None:
    if ir.max_span is None:
        return
    for edge in ir.edges.values():
        if edge.kind != "internal":
            continue
        i, j = ir.nodes[edge.src].index, ir.nodes[edge.dst].index
        if i is None or j is None or not 1 <= j - i <= ir.max_span:
            raise VerificationError("flow-restriction", f"internal edge {edge.src} -> {edge.dst} spans "
                                    f"{None if i is None or j is None else j - i}, outside "
                                    f"1..{ir.max_span}", offending=[edge.src, edge.dst])


def check_reduced(ir: IR) -> None:
    unused = [e.name for e in ir.edges.values() if not e.active_tasks()]
    if unused:
        raise VerificationError("reduced", "edges kept for no task remain", offending=unused)
    outgoing, incoming = ir.out_edges(), ir.in_edges()
    on_paths: set[str] = set()
    for task in ir.task_names:
        on_paths |= nodes_on_paths(ir, task, outgoing, incoming)
    dead = sorted(set(ir.nodes) - on_paths)
    if dead:
        raise VerificationError("reduced", "nodes lie on no task's kept path", offending=dead)


def check_decisions(ir: IR) -> None:
    governed: dict[tuple[str, str], str] = {}
    for name, decision in ir.decisions.items():
        def fail(message: str, offending: list[str] | None = None) -> VerificationError:
            return VerificationError("decisions", f"decision {name!r}: {message}", offending=offending or [name])

        if decision.name != name:
            raise fail(f"stored under {name!r} but named {decision.name!r}")
        if decision.kind not in DECISION_KINDS or decision.scope not in DECISION_SCOPES:
            raise fail(f"unknown kind {decision.kind!r} or scope {decision.scope!r}")
        unknown = [t for t in decision.tasks if t not in ir.task_names]
        if unknown or not decision.tasks:
            raise fail(f"decides for unknown tasks {unknown}" if unknown else "decides for no task")
        count = len(decision.options)
        if decision.kind == "bernoulli" and (count != 1 or len(decision.options[0]) != 1):
            raise fail("a bernoulli decision governs exactly one edge")
        if decision.kind == "categorical" and count < 2:
            raise fail(f"a categorical decision needs at least two options, it has {count}")
        if not ir.discretized and any(not option for option in decision.options):
            raise fail("an option turns no edge on")
        for key in decision.edges():
            edge = ir.edges.get(key)
            if edge is None:
                raise fail(f"governs edge {key[0]} -> {key[1]}, which does not exist", list(key))
            if key in governed:
                raise fail(f"edge {key[0]} -> {key[1]} is governed by decision {governed[key]!r} too", list(key))
            governed[key] = name
            missing = [t for t in decision.tasks if t not in edge.tasks]
            if missing:
                raise fail(f"edge {key[0]} -> {key[1]} does not serve tasks {missing}", list(key))
        owners = {SHARED} if decision.scope == "shared" else set(decision.tasks)
        if set(decision.logits) != owners:
            raise fail(f"has logits for {sorted(decision.logits)}, expected {sorted(owners)}")
        width = 1 if decision.kind == "bernoulli" else count
        for owner, logits in decision.logits.items():
            if len(logits) != width or not all(math.isfinite(v) for v in logits):
                raise fail(f"needs {width} finite logit(s) for {owner!r}, has {list(logits)}")
        if ir.discretized:
            _check_choice(ir, decision, fail)


def _check_choice(ir: IR, decision: Decision, fail) -> None:
    chosen = decision.chosen or {}
    for task in decision.tasks:
        if task not in chosen or not 0 <= chosen[task] < max(len(decision.options), 2):
            raise fail(f"has no valid choice for task {task!r} after discretisation")
        kept = {key for key in decision.edges() if ir.edges[key].is_active(task)}
        if decision.kind == "bernoulli":
            expected = set(decision.options[0]) if chosen[task] == 1 else set()
        else:
            expected = set(decision.options[chosen[task]])
        if not kept <= expected or (not ir.reduced and kept != expected):
            raise fail(f"task {task!r}: kept edges {sorted(kept)} are not the chosen option's {sorted(expected)}",
                       sorted({n for key in kept ^ expected for n in key}))
