"""The baselines as search spaces in the same IR: single-task networks, hard parameter sharing and
cross-stitch networks, each a build pass followed by the default pipeline's legalize-types and
attach-gates, lowered by the same supernet lowering."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dagir.backends.reference import evaluate_reference
from dagir.backends.torch_supernet import count_parameters, head_parameters, lower_supernet, weight_parameters
from dagir.ir import IR, Op, TensorType
from dagir.ir_stats import count_gates
from dagir.ir_stats import count_parameters as ir_parameters
from dagir.pass_manager import PassManager, parse_pass
from dagir.pipeline import before_search_pipeline, compile_spec, spec_options, spec_pipeline
from dagir.spec import Spec, load_spec
from dagir.verify import verify

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BASELINES = ["build-single-task", "build-hard-sharing", "build-cross-stitch"]


def baseline_spec(build: str, tasks: int = 3, nodes: int = 4, stages: int = 2, image: bool = True,
                  dense: bool = False) -> Spec:
    task_list = [{"name": f"t{i}", "kind": "classification", "classes": 3 + i} for i in range(tasks)]
    if dense:
        task_list[-1] = {"name": f"t{tasks - 1}", "kind": "segmentation", "classes": 2}
    return Spec(name="baseline", tasks=task_list,
                network={"input": {"shape": [2, 8, 6] if image else [5]}, "stem": {"channels": 3},
                         "central": {"nodes": nodes, "stages": stages, "channels": [3 + s for s in range(stages)]},
                         "heads": {"hidden": 4}},
                pipeline={"before_search": [build, "legalize-types", "attach-gates"]})


def build(name: str, **kwargs) -> IR:
    ir = compile_spec(baseline_spec(name, **kwargs))
    verify(ir)
    return ir


def batch_for(ir: IR) -> torch.Tensor:
    return torch.randn(3, *ir.input_node().type.shape, dtype=torch.float64)


# -- structure ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BASELINES)
def test_baselines_gate_nothing_and_record_their_span(name):
    ir = build(name)
    assert not any(edge.gated for edge in ir.edges.values())
    assert count_gates(ir) == 0
    assert ir.types_legal and ir.max_span == 1
    assert ir.provenance[0].startswith(name)


def test_single_task_networks_share_nothing():
    tasks, nodes = 3, 4
    ir = build("build-single-task", tasks=tasks, nodes=nodes)
    assert len(ir.nodes) == 1 + tasks * (1 + nodes + 1)  # input; per task a stem, the chain, a head
    assert len(ir.edges) == tasks * (1 + nodes + 1)
    for node in ir.nodes.values():
        assert (node.task is None) == (node.kind == "input")
    for edge in ir.edges.values():
        (task,) = edge.tasks
        assert ir.nodes[edge.dst].task == task
        assert ir.nodes[edge.src].task in (None, task), "no edge crosses from one task's network to another"
    assert [n.name for n in ir.nodes_of_kind("stem")] == ["stem_t0", "stem_t1", "stem_t2"]
    assert ir.edges[("t1_h2", "t1_h3")].op == Op("conv_bn_relu", {"c_in": 3, "c_out": 4, "stride": 2})


def test_hard_sharing_is_one_trunk_with_every_head_at_its_end():
    tasks, nodes = 3, 4
    ir = build("build-hard-sharing", tasks=tasks, nodes=nodes)
    assert len(ir.nodes) == 1 + 1 + nodes + tasks
    assert len(ir.edges) == 1 + nodes + tasks
    trunk = [e for e in ir.edges.values() if ir.nodes[e.dst].kind != "head"]
    assert all(set(e.tasks) == set(ir.task_names) for e in trunk)
    assert {e.src for e in ir.edges.values() if e.kind == "read_out"} == {f"h{nodes}"}
    assert all(node.task is None for node in ir.nodes.values() if node.kind != "head")


@pytest.mark.parametrize("tasks", [1, 2, 3])
def test_cross_stitch_mixes_every_chain_before_every_layer(tasks):
    nodes = 4
    ir = build("build-cross-stitch", tasks=tasks, nodes=nodes)
    assert len(ir.nodes) == 1 + tasks * (1 + nodes + 1)
    assert len(ir.edges) == tasks + nodes * tasks * tasks + tasks
    for j in range(1, nodes + 1):
        into_layer = [e for e in ir.edges.values() if ir.nodes[e.dst].index == j]
        assert len(into_layer) == tasks * tasks
        assert sum(e.kind == "cross" for e in into_layer) == tasks * (tasks - 1)
        for edge in into_layer:
            own = ir.nodes[edge.src].task == ir.nodes[edge.dst].task
            assert edge.kind == ("cross" if not own else "read_in" if j == 1 else "internal")
            assert edge.op == Op("scale", {"init": 0.9 if own else 0.1 / (tasks - 1)})
            assert set(edge.tasks) == {ir.nodes[edge.dst].task}
    layer = ir.nodes["t0_h3"]  # the first layer of stage 1: a strided conv on the mixed input
    assert layer.in_type == TensorType((3, 8, 6)) and layer.type == TensorType((4, 4, 3))
    assert layer.op == Op("conv_bn_relu", {"c_in": 3, "c_out": 4, "stride": 2})


def test_cross_stitch_weights_are_an_option():
    spec = baseline_spec("build-cross-stitch", tasks=3)
    passes = spec_pipeline(["build-cross-stitch{self_weight=0.6}", "legalize-types"], spec)
    ir = compile_spec(spec, passes=passes)
    inits = {e.kind: e.op.params["init"] for e in ir.edges.values() if e.op.name == "scale"}
    assert inits == {"read_in": 0.6, "internal": 0.6, "cross": pytest.approx(0.2)}


def test_baseline_options_default_from_the_spec_network():
    spec = baseline_spec("build-single-task", nodes=5, stages=2)
    for name in BASELINES:
        options = parse_pass(name, spec_options(spec)).model_dump()
        assert (options["nodes"], options["stages"], options["channels"]) == (5, 2, [3, 4])
        assert (options["stem_channels"], options["head_hidden"]) == (3, 4)


# -- lowering -------------------------------------------------------------------------------------
CASES = [(name, image, dense) for name in BASELINES for image, dense in ((True, False), (False, False), (True, True))]


@pytest.mark.parametrize("name, image, dense", CASES)
def test_baselines_lower_to_what_the_reference_computes(name, image, dense):
    torch.manual_seed(0)
    ir = build(name, image=image, dense=dense)
    module = lower_supernet(ir, dtype=torch.float64).eval()
    assert not module.gates.entries
    network = count_parameters(weight_parameters(module)) + count_parameters(head_parameters(module))
    assert network == ir_parameters(ir) == count_parameters(module)
    x = batch_for(ir)
    outputs = module(x)
    for task in ir.tasks:
        expected = (task.out_dim, *x.shape[2:]) if task.kind == "segmentation" else (task.out_dim,)
        assert tuple(outputs[task.name].shape) == (3, *expected)
    torch.testing.assert_close(outputs, evaluate_reference(ir, module, x, mode="soft"))


def test_hard_sharing_computes_the_trunk_once():
    module = lower_supernet(build("build-hard-sharing", tasks=3))
    for edge in ("edge_input_stem", "edge_stem_h1", "edge_h1_h2", "edge_h3_h4"):
        assert module.code.count(f"self.{edge}(") == 1


def perturb(module: torch.nn.Module, prefix: str) -> None:
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.startswith(prefix):
                parameter.add_(0.5)


def test_single_task_networks_are_independent():
    ir = build("build-single-task", tasks=2)
    module = lower_supernet(ir, dtype=torch.float64).eval()
    x = batch_for(ir)
    before = module(x)
    perturb(module, "edge_t1_h1_t1_h2")
    after = module(x)
    torch.testing.assert_close(after["t0"], before["t0"])
    assert not torch.allclose(after["t1"], before["t1"])


def test_cross_stitch_units_carry_one_task_into_another():
    ir = build("build-cross-stitch", tasks=2)
    module = lower_supernet(ir, dtype=torch.float64).eval()
    x = batch_for(ir)
    before = module(x)
    perturb(module, "op_t1_h1")
    assert not torch.allclose(module(x)["t0"], before["t0"]), "t1's layer reaches t0 through the cross units"
    with torch.no_grad():  # α = identity: the chains become independent single-task networks
        for edge in ir.edges.values():
            if edge.op.name == "scale":
                own = ir.nodes[edge.src].task == ir.nodes[edge.dst].task
                module.get_submodule(edge.name).alpha.fill_(1.0 if own else 0.0)
    unmixed = module(x)
    perturb(module, "op_t1_h2")
    torch.testing.assert_close(module(x)["t0"], unmixed["t0"])


def test_cross_stitch_weights_are_trained_with_the_network():
    module = lower_supernet(build("build-cross-stitch", tasks=2))
    alphas = [name for name, _ in module.named_parameters() if name.endswith("alpha")]
    assert len(alphas) == 4 * 2 * 2
    weights = {id(p) for p in weight_parameters(module)}
    assert all(id(module.get_parameter(name)) in weights for name in alphas)


# -- example specs --------------------------------------------------------------------------------
@pytest.mark.parametrize("example, name", [("baseline_single_task.yaml", "build-single-task"),
                                           ("baseline_hard_sharing.yaml", "build-hard-sharing"),
                                           ("baseline_cross_stitch.yaml", "build-cross-stitch")])
def test_example_baselines_compile(example, name):
    spec = load_spec(EXAMPLES / example)
    assert [p.name for p in before_search_pipeline(spec)] == [name, "legalize-types", "attach-gates"]
    ir = compile_spec(spec)
    assert ir.task_names == ["left", "right", "sum"]
    assert count_gates(ir) == 0
    module = lower_supernet(ir).eval()
    outputs = module(torch.randn(2, *ir.input_node().type.shape))
    assert {task: tuple(v.shape) for task, v in outputs.items()} == {"left": (2, 10), "right": (2, 10), "sum": (2, 1)}
    after = PassManager(spec_pipeline(spec.pipeline.after_search, spec, needs_build=False)).run(ir)
    assert set(after.edges) == set(ir.edges), "nothing was searched, so the compact network is the baseline"
    assert all(edge.active_tasks() == list(edge.tasks) for edge in after.edges.values())
