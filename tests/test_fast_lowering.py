"""The task-batched supernet (tasks stacked along the batch dimension, one call per edge), the
warm-up graph ("ones" mode: shared states computed once) and fused edges, against the per-task
lowering and the reference evaluator, in float64 and eval mode."""
from __future__ import annotations

import random

import torch
from hypothesis import given
from hypothesis import strategies as st

from dagir.backends.reference import evaluate_reference
from dagir.backends.torch_supernet import gate_parameters, lower_supernet
from dagir.pipeline import compile_spec

from test_lowering import PROPERTY, batch_for, make_spec, search_spaces, task_owned_chains, with_random_gates


def lowerings(ir, seed: int = 0) -> dict[str, torch.nn.Module]:
    """The three lowerings of `ir` with the same weights (random batch-norm statistics included)."""
    torch.manual_seed(seed)
    per_task = lower_supernet(ir, dtype=torch.float64, batched=False)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buffer in per_task.named_buffers():
            if name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape, generator=generator, dtype=buffer.dtype) + 0.5)
            elif name.endswith("running_mean"):
                buffer.copy_(torch.randn(buffer.shape, generator=generator, dtype=buffer.dtype))
    modules = {"per_task": per_task, "batched": lower_supernet(ir, dtype=torch.float64, fuse_edges=False),
               "fused": lower_supernet(ir, dtype=torch.float64, fuse_edges=True)}
    for module in modules.values():
        module.load_state_dict(per_task.state_dict(), strict=True)
        module.eval()
    return modules


def edge_module_calls(graph: torch.fx.Graph) -> list[str]:
    """The edge submodules a graph runs, a fused edge counted by its batch norm or ReLU."""
    calls = []
    for node in graph.nodes:
        target = str(node.target)
        if node.op == "call_module" and target.startswith("edge_"):
            parts = target.split(".")
            if len(parts) == 1 or parts[1] == "relu":
                calls.append(parts[0])
    return calls


@PROPERTY
@given(search_spaces(), st.sampled_from([0.3, 1.0]), st.integers(0, 2 ** 16))
def test_batched_and_fused_equal_the_reference_and_the_per_task_lowering(ir, tau, seed):
    modules = lowerings(ir, seed)
    x = batch_for(ir, 3)
    for mode in ("soft", "hard", "ones"):
        expected = evaluate_reference(ir, modules["per_task"], x, tau=tau, mode=mode)
        for module in modules.values():
            module.gates.mode, module.gates.tau = mode, tau
            torch.testing.assert_close(module(x), expected)


@PROPERTY
@given(search_spaces(), st.integers(0, 2 ** 16))
def test_every_edge_runs_once_per_graph(ir, seed):
    modules = lowerings(ir, seed)
    assert not any(str(n.target).startswith("fused_") or n.name.startswith("fused_")
                   for n in modules["batched"].graph.nodes), "the batched lowering is the unfused one"
    for name in ("batched", "fused"):
        module = modules[name]
        for graph in (module.graph, module.warmup_module.graph):
            calls = edge_module_calls(graph)
            assert len(calls) == len(set(calls))


@PROPERTY
@given(search_spaces(), st.integers(0, 2 ** 16))
def test_gate_gradients_match_the_per_task_lowering(ir, seed):
    modules = lowerings(ir, seed)
    x = batch_for(ir, 2)
    gradients = {}
    for name in ("per_task", "batched", "fused"):
        module = modules[name]
        module.gates.tau = 0.7
        outputs = module(x)
        loss = sum((output ** 2).sum() for output in outputs.values())
        parameters = gate_parameters(module) + [next(module.edge_input_stem.parameters())]
        gradients[name] = torch.autograd.grad(loss, parameters, allow_unused=True)
    for name in ("batched", "fused"):
        for mine, theirs in zip(gradients[name], gradients["per_task"]):
            assert (mine is None) == (theirs is None)
            if mine is not None:
                torch.testing.assert_close(mine, theirs)


def test_warm_up_computes_every_shared_state_once():
    ir = with_random_gates(compile_spec(make_spec(image=True, nodes=6, stages=2, tasks=3, max_span=3)),
                           random.Random(4))
    module = lower_supernet(ir, fuse_edges=False)
    warm = module.warmup_module
    # no edge is dropped, so every task shares every hidden state: one state per node, no gates
    assert sorted(edge_module_calls(warm.graph)) == sorted(e.name for e in ir.edges.values())
    assert "gates" not in warm.code and "unflatten" not in warm.code
    assert "return self.forward_ones(x)" in module.code
    # the soft graph stacks the three task states of h2: one conv, gated by a [3, 1, 1, 1, 1] vector
    assert "edge_h1_h2 = self.edge_h1_h2(h1)" in module.code
    assert ".view((3, 1, 1, 1, 1))" in module.code


def test_lowerings_share_submodules_and_state_dict_keys():
    ir = with_random_gates(compile_spec(make_spec(image=True, nodes=5, stages=2, tasks=3, aggregation="nddr")),
                           random.Random(2), drop=0.3)
    modules = lowerings(ir)
    keys = {name: list(module.state_dict()) for name, module in modules.items()}
    assert set(keys["batched"]) == set(keys["per_task"]) == set(keys["fused"])
    names = {name: {child for child, _ in module.named_children()} for name, module in modules.items()}
    assert names["batched"] == names["per_task"] == names["fused"]
    assert type(modules["fused"].edge_h1_h2.conv) is torch.nn.Conv2d, "fusion keeps each edge's own modules"
    warm = modules["batched"].warmup_module
    assert all(getattr(warm, name) is child for name, child in modules["batched"].named_children())


def test_fused_edges_run_one_wide_convolution():
    ir = compile_spec(make_spec(image=True, nodes=4, stages=1, tasks=2, max_span=3))
    module = lower_supernet(ir, fuse_edges=True)
    code = module.code
    # h1 -> h2, h3, h4 have the same op: one convolution on the concatenated weights
    assert "fused_h1_h2_h1_h3_h1_h4 = torch.functional.split(" in code or "fused_h1_h2_h1_h3_h1_h4 = torch.split(" in code
    assert "self.edge_h1_h2.bn(" in code


def test_task_owned_chains_batched():
    ir = task_owned_chains()
    modules = lowerings(ir, 3)
    x = batch_for(ir, 2)
    for mode in ("soft", "hard", "ones"):
        for module in modules.values():
            module.gates.mode = mode
            torch.testing.assert_close(module(x), evaluate_reference(ir, module, x, mode=mode))


def test_train_mode_with_one_task_matches_the_per_task_lowering():
    """Batch statistics mix only across tasks; with one task the batched lowering is the per-task one,
    running statistics included."""
    ir = with_random_gates(compile_spec(make_spec(image=True, nodes=4, stages=2, tasks=1)), random.Random(5))
    modules = lowerings(ir)
    x = batch_for(ir, 4)
    outputs = {}
    for name, module in modules.items():
        module.train()
        outputs[name] = module(x)
    torch.testing.assert_close(outputs["batched"], outputs["per_task"])
    torch.testing.assert_close(outputs["fused"], outputs["per_task"])
    torch.testing.assert_close(modules["batched"].state_dict(), modules["per_task"].state_dict())
    torch.testing.assert_close(modules["fused"].state_dict(), modules["per_task"].state_dict())


def test_edge_fusion_is_a_named_rewrite_recorded_per_graph():
    ir = compile_spec(make_spec(image=True, nodes=4, stages=1, tasks=2, max_span=3))
    fused, unfused = lower_supernet(ir, fuse_edges=True), lower_supernet(ir, fuse_edges=False)
    groups = fused.rewrites["fuse-edges"]["search"]
    assert ["edge_h1_h2", "edge_h1_h3", "edge_h1_h4"] in groups
    assert all(len(group) > 1 for graph in fused.rewrites["fuse-edges"].values() for group in graph)
    assert unfused.rewrites == {"fuse-edges": {"search": [], "warmup": []}, "fuse-sums": {"search": [], "warmup": []}}
    for group in groups:  # each group runs as one wide layer in the generated code
        assert "fused_" + "_".join(name[len("edge_"):] for name in group) in fused.code


def test_a_heads_summed_read_outs_run_as_one_linear_layer():
    """`fuse-sums`: every head sums its read-out edges (pool_linear here) as one layer, in both
    graphs; the read-out layers are then only pooled, never called (their weights are read)."""
    ir = compile_spec(make_spec(image=True, nodes=4, stages=1, tasks=2, max_span=3))
    fused = lower_supernet(ir, fuse_edges=True)
    incoming = ir.in_edges()
    read_outs = {task: sorted(edge.name for edge in incoming[ir.head_of(task).name]) for task in ir.task_names}
    assert all(len(names) > 1 for names in read_outs.values())
    for graph_name, graph in (("search", fused.graph), ("warmup", fused.warmup_module.graph)):
        assert sorted(map(sorted, fused.rewrites["fuse-sums"][graph_name])) == sorted(read_outs.values())
        called = {str(node.target) for node in graph.nodes if node.op == "call_module"}
        assert not called & {name for names in read_outs.values() for name in names}


def test_the_compiled_supernet_computes_the_supernet_and_its_gate_gradients():
    """`train.compile_supernet`: torch.compile of the fused supernet gives its outputs and gate
    gradients, with τ changing between calls as the search anneals it (~30 s on a 2-core CPU), its
    gate nodes (the default aggregation of a conv space) applying the gates as compiled code does."""
    ir = with_random_gates(compile_spec(make_spec(image=True, nodes=3, stages=1, tasks=2, aggregation="gate")),
                           random.Random(5))
    module = lowerings(ir, 5)["fused"]
    compiled = torch.compile(module)
    x = batch_for(ir, 2)
    for tau in (0.9, 0.6):
        module.gates.tau = tau
        results = []
        for forward in (module, compiled):
            outputs = forward(x)
            loss = sum((output ** 2).sum() for output in outputs.values())
            results.append((outputs, torch.autograd.grad(loss, gate_parameters(module))))
        (eager, eager_grads), (mine, mine_grads) = results
        torch.testing.assert_close(mine, eager)
        for ours, theirs in zip(mine_grads, eager_grads):
            torch.testing.assert_close(ours, theirs)
