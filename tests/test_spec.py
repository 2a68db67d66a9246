"""Spec loading: defaults, overrides, and located errors for bad input."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dagir.errors import SpecError
from dagir.spec import load_spec

EXAMPLES = Path(__file__).parent.parent / "examples"

GOOD = """\
name: t
data: {dataset: multimnist}
tasks:
  - {name: left, kind: classification, classes: 10}
  - {name: sum, kind: regression}
network:
  central: {nodes: 4, stages: 2, channels: [8, 16]}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_defaults_are_filled_in(tmp_path):
    spec = load_spec(write(tmp_path, GOOD))
    assert spec.network.flow_restriction.max_span == 3
    assert spec.search.reduction.threshold == 0.5
    assert spec.tasks[1].out_dim == 1
    assert spec.resolved_dict()["train"]["search"]["train_weights"] is False


def test_overrides_use_dotted_keys_and_list_indices(tmp_path):
    spec = load_spec(write(tmp_path, GOOD), ["train.search.epochs=7", "tasks.1.weight=0.25",
                                             "network.flow_restriction.max_span=null"])
    assert spec.train.search.epochs == 7
    assert spec.tasks[1].weight == 0.25
    assert spec.network.flow_restriction.max_span is None


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_examples_load(name):
    assert load_spec(EXAMPLES / name).tasks


@pytest.mark.parametrize("text, expected", [
    (GOOD.replace("nodes: 4", "nodes: 0"), "spec.yaml:7:13: network.central.nodes: must be >= 1 (got 0)"),
    (GOOD + "  flow_restriction: {max_span: 0}\n",
     "spec.yaml:8:22: network.flow_restriction.max_span: must be >= 1 (got 0)"),
    (GOOD + "  colour: red\n", "spec.yaml:8:3: network.colour: unknown field"),
    (GOOD.replace("kind: regression", "kind: regresion"), "spec.yaml:5:17: tasks.1.kind: must be one of"),
    (GOOD.replace("name: sum", "name: left"), "spec.yaml:3:1: tasks: duplicate task name 'left'"),
    (GOOD.replace("name: sum", "name: total"), "spec.yaml:5:6: tasks.1.name: data set 'multimnist' has no task 'total'"),
    (GOOD.replace("kind: regression", "kind: classification, classes: 19"),
     "spec.yaml:5:17: tasks.1.kind: task 'sum' is regression in data set 'multimnist', not classification"),
    (GOOD.replace("nodes: 4, stages: 2, channels: [8, 16]", "nodes: 8, stages: 7, channels: 8"),
     "network.central.stages: 7 stages halve the resolution 6 times"),
    (GOOD.replace("multimnist", "imagenet"), "spec.yaml:2:8: data.dataset: unknown dataset 'imagenet'"),
    (GOOD.replace("classes: 10", "classes: ten"), "tasks.0.classes: input should be a valid integer"),
    ("name: [unclosed\n", "spec.yaml:2:1: malformed YAML"),
    ("tasks: !!python/object:os.system {}\n", "YAML tag 'tag:yaml.org,2002:python/object:os.system' is not allowed"),
    ("- 1\n- 2\n", "a spec is a mapping of sections"),
    (GOOD.replace("nodes: 4, stages: 2", "nodes: 100000000, stages: 2"),
     "spec.yaml:7:13: network.central.nodes: 100,000,000 nodes are more than limits.nodes (1,024)"),
    (GOOD.replace("nodes: 4, stages: 2", "nodes: 1000, stages: 2") + "  flow_restriction: {max_span: null}\n",
     "network.flow_restriction.max_span: 1,000 nodes with max_span 999 make about 505,500 edges, more than limits.edges"),
    (GOOD.replace("channels: [8, 16]", "channels: [8, 1000000000000]"),
     "network.central.channels.1: a width of 1,000,000,000,000 is more than limits.width"),
    (GOOD.replace("channels: [8, 16]", "channels: [8, 16000]") + "limits: {width: 20000}\n",
     "spec.yaml:6:1: network: the search space holds 2,317,942,429 parameters, more than limits.parameters"),
    (GOOD + "train: {search: {strategy: reinforce}}\n",
     "spec.yaml:8:18: train.search.strategy: reinforce samples categorical decisions, and this search space has none"),
    (GOOD + "pipeline: {before_search: ['build-routing{experts=2, route_size=1}', legalize-types, attach-gates]}\n"
     "train: {search: {strategy: reinforce}}\nsearch: {squeeze: {kind: cost}}\n",
     "search.squeeze.kind: cost weighs each gate of its edge, and reinforce squeezes its decisions' probabilities"),
    (GOOD + "pipeline: {before_search: ['build-routing{experts=2, route_size=3}', legalize-types, attach-gates]}\n",
     "pipeline.before_search: pass 'build-routing': route_size (3) cannot exceed the 2 experts"),
    (GOOD + "pipeline: {before_search: ['build-routing{experts=0}', legalize-types, attach-gates]}\n",
     "pipeline.before_search: pass 'build-routing': option 'experts': Input should be greater than or equal to 1"),
    (GOOD.replace("name: sum", "name: 9lives"), "tasks.1.name: string should match pattern '^[A-Za-z][A-Za-z0-9_]*$'"),
    (GOOD.replace("name: t", "name: t\nseed: " + "x" * 10_000), "(10,002 characters)"),
    (GOOD.replace("name: t", "name: t\nseed: " + "9" * 10_000),
     "spec.yaml:2:7: seed: cannot read this value (Exceeds the limit (4300 digits) for integer string conversion"),
    (GOOD + "train: {warmup: {lr: .inf}}\n", "spec.yaml:8:18: train.warmup.lr: input should be a finite number"),
    (GOOD.replace("kind: regression", "kind: regression, weight: .inf"), "tasks.1.weight: input should be a finite number"),
    (GOOD + "search: {gates: {init: .nan}}\n", "spec.yaml:8:18: search.gates.init: input should be a finite number"),
    ("seed: 1000000000000000000000000000000\n" + GOOD, "spec.yaml:1:1: seed: must be < 9223372036854775808"),
    (GOOD + "pipeline: {before_search: [flow-restrict]}\n",
     "spec.yaml:8:12: pipeline.before_search: the pipeline builds nothing"),  # at load, not after training
    (GOOD + "pipeline: {after_search: [discretise]}\n", "spec.yaml:8:12: pipeline.after_search: unknown pass 'discretise'"),
    (GOOD + "bench: {methods: [searched, magic]}\n",
     "spec.yaml:8:29: bench.methods.1: unknown method 'magic': neither built in"),
    # the data options and split fractions are checked at load, before any data is read
    (GOOD.replace("{dataset: multimnist}", "{dataset: multimnist, options: {canvas: 200}}"),
     "spec.yaml:2:39: data.options.canvas: must be between 28 and 56 (got 200) (data set 'multimnist')"),
    (GOOD.replace("{dataset: multimnist}", "{dataset: multimnist, options: {canvs: 40}}"),
     "data.options.canvs: unknown option(s) 'canvs' (its options: canvas, test_fraction"),
    (GOOD.replace("{dataset: multimnist}", "{dataset: multimnist, options: {test_size: many}}"),
     "data.options.test_size: must be an integer (got 'many')"),
    (GOOD.replace("{dataset: multimnist}", "{dataset: multimnist, val_split: 0.5, options: {test_fraction: 0.6}}"),
     "data.val_split: val_split (0.5) plus data.options.test_fraction (0.6) leave no training data"),
    (GOOD.replace("{dataset: multimnist}", "{dataset: mmoe_synthetic, options: {correlation: .inf}}"),
     "data.options.correlation: must be a finite number (got inf)"),
    (GOOD.replace("network:\n", "network:\n  input: {shape: [1, 28, 28]}\n"),
     "network.input.shape: the data set 'multimnist' gives inputs of shape [1, 36, 36], not [1, 28, 28]"),
])
def test_bad_input_is_located(tmp_path, text, expected):
    path = write(tmp_path, text)
    if expected is None:
        load_spec(path)
        return
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert expected in str(caught.value)
    assert str(caught.value).startswith(str(path).rsplit("/", 1)[0]) or "spec.yaml" in str(caught.value)


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "nope.yaml")


def test_bad_override_is_reported(tmp_path):
    with pytest.raises(SpecError, match=r"--set tasks.5.weight=1: tasks.5: no list item"):
        load_spec(write(tmp_path, GOOD), ["tasks.5.weight=1"])
    with pytest.raises(SpecError, match="expected dotted.key=value"):
        load_spec(write(tmp_path, GOOD), ["train.search.epochs"])
    with pytest.raises(SpecError, match=r"--set train.search.epochs=many: train.search.epochs: input should be a valid integer"):
        load_spec(write(tmp_path, GOOD), ["train.search.epochs=many"])
    with pytest.raises(SpecError, match=r"^--set train.warmpu.epochs=1: train.warmpu: "):  # a key the --set made
        load_spec(write(tmp_path, GOOD), ["train.warmpu.epochs=1"])
    for value in ("single-task", "0", "true"):
        with pytest.raises(SpecError, match=r"search.budget.macs: must be a positive integer, 'single_task', 'auto' or null"):
            load_spec(write(tmp_path, GOOD), [f"search.budget.macs={value}"])
    assert load_spec(write(tmp_path, GOOD), ["search.budget.parameters=single_task"]).search.budget.parameters == "single_task"


def test_the_final_stage_anneals_by_default_and_the_resolved_spec_says_so():
    def schedules(*overrides):
        train = load_spec("examples/digits.yaml", list(overrides)).train
        return tuple(getattr(train, stage).lr_schedule for stage in ("warmup", "search", "finetune"))
    assert schedules() == ("constant", "constant", "cosine")
    assert schedules("train.finetune.epochs=0") == ("constant", "cosine", "constant")  # the search ends the run
    assert schedules("train.search.epochs=0", "train.finetune.epochs=0") == ("cosine", "constant", "constant")
    assert schedules("train.finetune.lr_schedule=constant") == ("constant", "constant", "constant")
    assert schedules("train.warmup.lr_schedule=cosine") == ("cosine", "constant", "cosine")
    resolved = yaml.safe_load(load_spec("examples/digits.yaml").resolved_yaml())
    assert resolved["train"]["finetune"]["lr_schedule"] == "cosine"
    assert resolved["train"]["warmup"]["lr_schedule"] == "constant"


def test_a_budget_by_default_where_the_pipeline_meets_one(tmp_path):
    spec = load_spec("examples/digits.yaml")  # names no budget
    assert (spec.search.budget.macs, spec.search.budget.parameters) == ("single_task", "single_task")
    unfitted = ["pipeline.after_search=[discretize, share-states]"]
    spec = load_spec("examples/digits.yaml", unfitted)  # no fit-budget pass: no budget, and no refusal
    assert (spec.search.budget.macs, spec.search.budget.parameters) == (None, None)
    with pytest.raises(SpecError, match="search.budget: a budget is met by the fit-budget pass"):
        load_spec("examples/digits.yaml", unfitted + ["search.budget.macs=single_task"])
    assert load_spec("examples/digits.yaml", ["search.budget.macs=null"]).search.budget.macs is None
