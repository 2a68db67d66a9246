"""The search strategies (dagir.training.search): REINFORCE finds the option that carries the
signal, the two-split alternating search never shows a sample to both steps, and both strategies
resume to the same result."""
from __future__ import annotations

import pytest
import torch

from dagir.backends.reference import evaluate_reference
from dagir.backends.torch_supernet import head_parameters, lower_supernet
from dagir.datasets.splits import Split
from dagir.ir import IR, Decision, Edge, EdgeTaskState, Node, Op, Task, TensorType
from dagir.run_job import Run
from dagir.spec import Spec, TaskSpec, load_spec
from dagir.training.search import SearchContext, make_strategy
from dagir.training.stages import search_splits
from dagir.verify import verify
from test_run import CONV_TINY, TINY, run_quietly


@pytest.fixture()
def tiny_spec(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def signal_or_nothing() -> IR:
    """x -> stem -> {h_signal (identity), h_nothing (x times a frozen 0)} -> head: a categorical
    decision over the read-out, option 0 from h_signal, option 1 from h_nothing."""
    vector = TensorType((4,))
    ir = IR("toy", [Task("y", "regression", 1)])
    ir.add_node(Node("input", "input", vector))
    ir.add_node(Node("stem", "stem", vector))
    ir.add_node(Node("h_signal", "hidden", vector, index=1))
    ir.add_node(Node("h_nothing", "hidden", vector, index=1))
    ir.add_node(Node("head_y", "head", TensorType((1,)), in_type=vector, op=Op("linear", {"d_in": 4, "d_out": 1}),
                     task="y"))
    served = {"y": EdgeTaskState()}
    for src, dst, kind, op in (("input", "stem", "stem", Op("identity")),
                               ("stem", "h_signal", "read_in", Op("identity")),
                               ("stem", "h_nothing", "read_in", Op("scale", {"init": 0.0})),
                               ("h_signal", "head_y", "read_out", Op("identity")),
                               ("h_nothing", "head_y", "read_out", Op("identity"))):
        ir.add_edge(Edge(src, dst, kind, op, dict(served)))
    ir.add_decision(Decision("route_y", "categorical", ((("h_signal", "head_y"),), (("h_nothing", "head_y"),)),
                             ("y",), {"y": (0.0, 0.0)}))
    verify(ir)
    return ir


def toy_batches(seed: int, count: int, size: int = 32):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.tensor([1.0, -2.0, 0.5, 3.0])
    for _ in range(count):
        x = torch.randn(size, 4, generator=generator)
        yield x, {"y": (x @ weight)[:, None]}


def test_reinforce_converges_to_the_option_that_carries_the_signal():
    torch.manual_seed(0)
    ir = signal_or_nothing()
    supernet = lower_supernet(ir)
    stage = Spec(tasks=[{"name": "y", "kind": "regression"}],
                 train={"search": {"strategy": "reinforce", "gate_lr": 0.1, "lr": 0.05}}).train.search
    squeeze = Spec(tasks=[{"name": "y", "kind": "regression"}], search={"squeeze": {"kind": "none"}}).search.squeeze
    context = SearchContext(supernet, stage, squeeze, [TaskSpec(name="y", kind="regression")], supernet,
                            weights=[], heads=head_parameters(supernet), seed=0)
    strategy = make_strategy(context)
    for index, batch in enumerate(toy_batches(0, 300)):
        strategy.step(batch, 0, index)
    probabilities = torch.softmax(supernet.gates.logits["choice_route_y"].detach()[0], dim=0)
    assert probabilities[0] > 0.95, probabilities


def test_a_fixed_sample_lowers_like_the_reference_evaluator():
    ir = signal_or_nothing()
    supernet = lower_supernet(ir, dtype=torch.float64).eval()
    supernet.gates.generator = torch.Generator().manual_seed(4)
    sample = supernet.gates.sample()
    supernet.gates.fix(sample)
    supernet.gates.mode = "fixed"
    x = torch.randn(5, 4, dtype=torch.float64)
    fixed = {"route_y": {"y": sample.tolist()}}
    torch.testing.assert_close(supernet(x), evaluate_reference(ir, supernet, x, mode="fixed", fixed=fixed))


def test_two_split_alternating_never_shows_a_sample_to_both_steps(tmp_path, tiny_spec):
    spec = load_spec(tiny_spec, ["train.search.mode=alternating", "train.search.split=0.5"])
    count = 200
    train = Split(torch.arange(count, dtype=torch.float32)[:, None], {"digit": torch.zeros(count, dtype=torch.long)},
                  torch.arange(count)[:, None])
    rest, arch_batch = search_splits(Run(spec, tmp_path / "o", progress=False).runner, train)
    weight_rows = set(rest.inputs[:, 0].long().tolist())
    arch_rows = {int(v) for epoch in range(3) for index in range(10) for v in arch_batch(epoch, index)[0][:, 0]}
    assert weight_rows and arch_rows and not weight_rows & arch_rows
    assert len(weight_rows) + len(set(range(count)) - weight_rows) == count
    assert arch_rows <= set(range(count)) - weight_rows


@pytest.mark.parametrize("overrides", [
    ["train.search.strategy=reinforce", "train.search.split=0.5",
     "pipeline.before_search=['build-routing{layers=2, experts=2}', legalize-types, attach-gates]",
     "pipeline.after_search=[discretize, 'flow-reduce{enabled=false}', share-states]"],
    ["train.search.mode=alternating", "train.search.split=0.5", "train.search.train_weights=true",
     "train.search.weight_relaxation=relaxed-bernoulli"],
])
def test_the_strategies_resume_to_the_same_result(tmp_path, tiny_spec, overrides, monkeypatch):
    import dagir.training.loop as training_loop
    import dagir.training.search as search_strategies

    whole = run_quietly(tiny_spec, tmp_path / "whole", overrides=overrides)
    real_loss = training_loop.multitask_loss
    calls = {"n": 0}

    def flaky_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 14:  # inside search, after its mid-epoch checkpoint
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(search_strategies, "multitask_loss", flaky_loss)
    monkeypatch.setattr(training_loop, "multitask_loss", flaky_loss)
    with pytest.raises(KeyboardInterrupt):
        run_quietly(tiny_spec, tmp_path / "resumed", overrides=overrides)
    monkeypatch.setattr(search_strategies, "multitask_loss", real_loss)
    monkeypatch.setattr(training_loop, "multitask_loss", real_loss)
    resumed = run_quietly(tiny_spec, tmp_path / "resumed", resume=True, overrides=overrides)
    assert resumed["test"] == whole["test"]
    assert (tmp_path / "resumed" / "architecture.json").read_text() == (tmp_path / "whole" / "architecture.json").read_text()


def test_each_alternating_step_computes_only_the_gradients_it_applies(tiny_spec):
    """The architecture step moves the decisions and leaves Θ and the heads without gradients (and
    unchanged); the weight step leaves the gates without gradients; both give every parameter its
    `requires_grad` back."""
    from dagir.backends.torch_supernet import gate_parameters, weight_parameters
    from dagir.pipeline import compile_spec

    torch.manual_seed(0)
    spec = load_spec(tiny_spec, ["train.search.mode=alternating", "train.search.train_weights=true"])
    ir = compile_spec(spec)
    supernet = lower_supernet(ir).train()
    supernet.gates.mode = "soft"
    weights, heads, gates = weight_parameters(supernet), head_parameters(supernet), gate_parameters(supernet)
    context = SearchContext(supernet, spec.train.search, spec.search.squeeze, spec.tasks, supernet,
                            weights=weights, heads=heads, seed=0)
    strategy = make_strategy(context)
    batch = (torch.randn(16, *ir.input_node().type.shape),
             {"digit": torch.randint(0, 10, (16,)), "parity": torch.randint(0, 2, (16,))})
    before = [p.detach().clone() for p in weights + heads + gates]

    strategy.step(batch, 0, 1)  # an odd index: the architecture step
    assert all(p.grad is None for p in weights + heads)
    assert all(p.grad is not None for p in gates)
    assert all(torch.equal(p, b) for p, b in zip(weights + heads, before))
    assert any(not torch.equal(p, b) for p, b in zip(gates, before[len(weights + heads):]))

    strategy.step(batch, 0, 2)  # the weight step
    assert all(p.grad is None for p in gates)
    assert any(p.grad is not None for p in weights) and all(p.grad is not None for p in heads)
    assert all(p.requires_grad for p in weights + heads + gates)


def architecture_step_gradients(tmp_path, arch_norm: str):
    """One alternating architecture step on a fresh tiny conv supernet: the gates' gradients, and whether
    it moved any batch norm's running mean."""
    from dagir.backends.torch_supernet import gate_parameters, weight_parameters
    from dagir.pipeline import compile_spec

    torch.manual_seed(0)
    spec_file = tmp_path / "conv.yaml"
    spec_file.write_text(CONV_TINY)
    spec = load_spec(spec_file, ["train.search.mode=alternating", "train.search.train_weights=true",
                                 f"train.search.arch_norm={arch_norm}"])
    ir = compile_spec(spec)
    supernet = lower_supernet(ir).train()
    supernet.gates.mode = "soft"
    norms = [m for m in supernet.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:  # running statistics unlike any batch's, as after a warm-up on other gates
        norm.running_mean.fill_(0.5)
        norm.running_var.fill_(4.0)
    context = SearchContext(supernet, spec.train.search, spec.search.squeeze, spec.tasks, supernet,
                            weights=weight_parameters(supernet), heads=head_parameters(supernet), seed=0)
    batch = (torch.randn(16, *ir.input_node().type.shape),
             {"left": torch.randint(0, 10, (16,)), "right": torch.randint(0, 10, (16,))})
    make_strategy(context).step(batch, 0, 1)  # an odd index: the architecture step
    assert norms and all(norm.training for norm in norms)  # back in training mode after the step
    moved = any(not torch.all(norm.running_mean == 0.5) for norm in norms)
    return torch.cat([p.grad.flatten() for p in gate_parameters(supernet)]), moved


def test_arch_norm_running_makes_the_architecture_step_normalise_with_running_statistics(tmp_path):
    batch_grads, batch_moved = architecture_step_gradients(tmp_path, "batch")
    running_grads, running_moved = architecture_step_gradients(tmp_path, "running")
    assert batch_moved and not running_moved  # the running statistics are read, not updated
    assert not torch.allclose(batch_grads, running_grads, rtol=1e-3, atol=1e-6)


def test_arch_norm_running_needs_alternating_steps_when_weights_train(tiny_spec):
    from test_cli import dagir
    code, _, stderr = dagir("compile", str(tiny_spec), "-o", str(tiny_spec.parent / "c"), "--set",
                            "train.search.train_weights=true", "--set", "train.search.arch_norm=running")
    assert code == 2 and "train.search.arch_norm" in stderr and "alternating" in stderr, stderr
