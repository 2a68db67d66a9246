"""Dense-prediction heads: segmentation, depth and normals tasks predict [C, H, W] at the input's
resolution, from read-outs at any resolution (`upsample_conv`, `dense_head`)."""
from __future__ import annotations


import pytest
import torch
from helpers import with_random_logits
from torch.nn import functional

from dagir.backends.reference import evaluate_reference
from dagir.backends.torch_ops import build_op
from dagir.backends.torch_supernet import count_parameters, head_parameters, lower_supernet, weight_parameters
from dagir.errors import UserError
from dagir.ir import Op, TensorType
from dagir.ir_stats import count_parameters as ir_parameters
from dagir.ops import OpTypeError, mac_count, output_type, parameter_count
from dagir.pipeline import compile_spec
from dagir.spec import Spec
from dagir.tasks import task_loss
from dagir.verify import verify

NEW_OPS = [
    (Op("upsample_conv", {"c_in": 3, "c_out": 5, "height": 9, "width": 7}), (3, 3, 2)),
    (Op("upsample_conv", {"c_in": 2, "c_out": 4, "height": 6, "width": 6}), (2, 6, 6)),
    (Op("dense_head", {"c_in": 4, "c_out": 3}), (4, 5, 7)),
    (Op("scale", {"init": 0.25}), (3, 4, 4)),
    (Op("scale", {"init": 0.9}), (6,)),
]


@pytest.mark.parametrize("op, shape", NEW_OPS, ids=lambda case: str(case))
def test_new_op_modules_match_the_registry(op, shape):
    module = build_op(op).eval()
    output = module(torch.randn(2, *shape))
    assert tuple(output.shape[1:]) == output_type(op, TensorType(shape)).shape
    assert count_parameters(module) == parameter_count(op)


def test_upsample_conv_projects_then_resizes_bilinearly():
    op = Op("upsample_conv", {"c_in": 2, "c_out": 3, "height": 8, "width": 5})
    module = build_op(op).eval()
    x = torch.randn(2, 2, 3, 2)
    projected = torch.relu(module.bn(module.conv(x)))
    expected = functional.interpolate(projected, size=(8, 5), mode="bilinear", align_corners=False)
    torch.testing.assert_close(module(x), expected)
    assert mac_count(op, TensorType((2, 3, 2))) == 2 * 3 * 3 * 2, "the conv runs at the source resolution"


def test_upsample_conv_refuses_to_down_sample_and_dense_head_needs_images():
    with pytest.raises(OpTypeError, match="up-samples"):
        output_type(Op("upsample_conv", {"c_in": 2, "c_out": 3, "height": 2, "width": 8}), TensorType((2, 4, 4)))
    with pytest.raises(OpTypeError, match="image"):
        output_type(Op("dense_head", {"c_in": 4, "c_out": 1}), TensorType((4,)))


def test_scale_multiplies_by_its_learned_scalar():
    module = build_op(Op("scale", {"init": 0.3}))
    x = torch.randn(2, 3)
    torch.testing.assert_close(module(x), 0.3 * x)
    assert module.alpha.requires_grad


# -- dense tasks in the central network -----------------------------------------------------------
def dense_spec(stem_stride: int = 1, max_span: int | None = 2, read_out: bool = True) -> Spec:
    return Spec(tasks=[{"name": "seg", "kind": "segmentation", "classes": 4}, {"name": "depth", "kind": "depth"},
                       {"name": "normals", "kind": "normals"},
                       {"name": "digit", "kind": "classification", "classes": 3}],
                network={"input": {"shape": [3, 9, 7]}, "stem": {"channels": 3, "stride": stem_stride},
                         "central": {"nodes": 4, "stages": 2, "channels": [3, 4]}, "heads": {"hidden": 5},
                         "flow_restriction": {"max_span": max_span}, "read_out": read_out})


def test_dense_heads_predict_per_pixel_at_the_input_resolution():
    ir = compile_spec(dense_spec())
    verify(ir)
    expected = {"seg": (4, 9, 7), "depth": (1, 9, 7), "normals": (3, 9, 7)}
    for task, shape in expected.items():
        head = ir.head_of(task)
        assert head.type == TensorType(shape)
        assert head.input_type == TensorType((5, 9, 7))
        assert head.op == Op("dense_head", {"c_in": 5, "c_out": shape[0]})
    digit = ir.head_of("digit")
    assert digit.type == TensorType((3,)) and digit.op.name == "head_mlp"


def test_read_outs_into_dense_heads_up_sample_from_lower_stages():
    ir = compile_spec(dense_spec())
    for task in ("seg", "depth", "normals"):
        ops = {edge.src: edge.op for edge in ir.edges.values() if edge.dst == f"head_{task}"}
        assert set(ops) == {"h1", "h2", "h3", "h4"}
        for source in ("h1", "h2"):  # stage 0, at the input's resolution
            assert ops[source] == Op("conv_bn_relu", {"c_in": 3, "c_out": 5, "stride": 1, "kernel": 1})
        for source in ("h3", "h4"):  # stage 1, 5x4
            assert ops[source] == Op("upsample_conv", {"c_in": 4, "c_out": 5, "height": 9, "width": 7})
    digit_ops = {edge.op.name for edge in ir.edges.values() if edge.dst == "head_digit"}
    assert digit_ops == {"pool_linear"}


def test_a_strided_stem_up_samples_every_read_out():
    ir = compile_spec(dense_spec(stem_stride=2, read_out=False))
    (edge,) = [e for e in ir.edges.values() if e.dst == "head_seg"]
    assert edge.src == "h4"
    assert edge.op == Op("upsample_conv", {"c_in": 4, "c_out": 5, "height": 9, "width": 7})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lowered_dense_heads_equal_the_reference_evaluator(seed):
    torch.manual_seed(seed)
    ir = with_random_logits(compile_spec(dense_spec(stem_stride=1 + seed % 2)), seed)
    module = lower_supernet(ir, dtype=torch.float64).eval()
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    module.gates.tau = 0.7
    for mode in ("soft", "hard"):
        module.gates.mode = mode
        outputs = module(x)
        assert {task: tuple(value.shape) for task, value in outputs.items()} == {
            "seg": (2, 4, 9, 7), "depth": (2, 1, 9, 7), "normals": (2, 3, 9, 7), "digit": (2, 3)}
        torch.testing.assert_close(outputs, evaluate_reference(ir, module, x, tau=0.7, mode=mode))
    network = count_parameters(weight_parameters(module)) + count_parameters(head_parameters(module))
    assert network == ir_parameters(ir)


def test_dense_outputs_train_against_their_losses():
    ir = compile_spec(dense_spec())
    module = lower_supernet(ir)
    x = torch.randn(3, 3, 9, 7)
    outputs = module(x)
    targets = {"seg": torch.randint(0, 4, (3, 9, 7)), "depth": torch.rand(3, 1, 9, 7) + 0.1,
               "normals": functional.normalize(torch.randn(3, 3, 9, 7), dim=1)}
    loss = sum(task_loss(ir.tasks[i].kind, outputs[task], targets[task])
               for i, task in enumerate(("seg", "depth", "normals")))
    loss.backward()
    for task in ("seg", "depth", "normals"):
        classifier = getattr(module, f"head_{task}").classifier
        assert classifier.weight.grad is not None and classifier.weight.grad.abs().sum() > 0


def test_a_dense_task_needs_an_image_input():
    spec = Spec(tasks=[{"name": "depth", "kind": "depth"}],
                network={"input": {"shape": [5]}, "central": {"nodes": 2, "stages": 1, "channels": [4]}})
    with pytest.raises(UserError, match="needs an image input"):
        compile_spec(spec)
