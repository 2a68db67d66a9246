"""The search-space spec: pydantic models for every section, and `load_spec`.

Every model forbids unknown keys; every default is filled in, so the resolved spec written beside
each output says exactly what ran. Errors name the file, line, column and field path:
`spec.yaml:14:5: network.central.nodes: must be >= 1 (got 0)`. The checks across sections, which need
the data registry and the pipelines, are `dagir.spec_checks`; `load_spec` runs them.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from .errors import SpecError
from .ir import Aggregation, NddrNorm
from .spec_loader import FieldPath, Location, apply_override, format_path, locate, read_spec_file

TaskKind = Literal["classification", "multilabel", "regression", "segmentation", "depth", "normals"]
CLASS_KINDS = ("classification", "multilabel", "segmentation")  # the kinds that predict `classes`


class Strict(BaseModel):
    # no infinite or NaN number anywhere in a spec: a learning rate of .inf is a typo, not a setting
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_yes_or_no_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        """`epochs: true` is a slip, not 1 epoch (pydantic reads a bool as 1 or 0 where a number goes)."""
        if isinstance(value, bool) and info.field_name and not _takes_a_bool(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"must be a number or a name, not {str(value).lower()}")
        return value


def _takes_a_bool(annotation: Any) -> bool:
    """Whether a field of this type may be true or false."""
    if annotation is bool or annotation is Any:
        return True
    if get_origin(annotation) is Literal:
        return any(isinstance(option, bool) for option in get_args(annotation))
    if get_origin(annotation) in (Union, UnionType):
        return any(_takes_a_bool(option) for option in get_args(annotation))
    return False


# -- data and tasks -------------------------------------------------------------------------------
class DataSpec(Strict):
    dataset: str = "multimnist"
    options: dict[str, Any] = Field(default_factory=dict)
    root: str | None = None
    batch_size: int = Field(128, ge=1)
    val_split: float = Field(0.1, gt=0, lt=1)

    @field_validator("root")
    @classmethod
    def _absolute(cls, root: str | None) -> str | None:
        """A relative root is read from the folder the command runs in, and recorded absolute, so the run
        folder's spec finds the data from anywhere (eval, export, --resume)."""
        return None if root is None else os.path.abspath(os.path.expanduser(root))


class TaskSpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    kind: TaskKind
    classes: int | None = Field(None, ge=1)
    loss: str | None = None
    metric: str | None = None
    weight: float = Field(1.0, gt=0)
    squeeze: float = Field(1.0, ge=0)  # this task's share of the squeeze: its gates are squeezed this much harder

    @model_validator(mode="after")
    def _two_classes_at_least(self) -> "TaskSpec":
        if self.kind == "classification" and self.classes is not None and self.classes < 2:
            raise ValueError("a classification task needs classes >= 2")
        return self

    @property
    def has_classes(self) -> bool:
        """Whether this kind of task predicts classes (its `classes` given, or read from the data set)."""
        return self.kind in CLASS_KINDS

    @property
    def out_dim(self) -> int:
        if self.classes is not None:
            return self.classes
        if self.has_classes:
            raise ValueError(f"task {self.name!r}: its number of classes is not known; give tasks[].classes, or "
                             "load the spec with load_spec, which reads it from the data set")
        return 3 if self.kind == "normals" else 1


# -- network --------------------------------------------------------------------------------------
class InputSpec(Strict):
    shape: list[int] = Field(min_length=1, max_length=3)

    @field_validator("shape")
    @classmethod
    def _shape(cls, shape: list[int]) -> list[int]:
        if len(shape) == 2:
            raise ValueError("shape is [C, H, W] for images or [D] for vectors")
        if any(d < 1 for d in shape):
            raise ValueError(f"every dimension must be >= 1 (got {shape})")
        return shape


class StemSpec(Strict):
    channels: int = Field(16, ge=1)
    stride: int = Field(1, ge=1)  # an image stem may down-sample before the first stage


class CentralSpec(Strict):
    nodes: int = Field(9, ge=1)
    stages: int = Field(3, ge=1)
    channels: list[int] | int = Field(default_factory=lambda: [16, 32, 64])
    edge_op: Literal["auto", "conv", "mlp"] = "auto"
    resample: Literal["strided", "pool"] = "strided"
    # how a node combines its gated inputs: the paper's sum (DESIGN §4), NDDR's learned mixing, a
    # softmax gate computed from them, `mix`: both of the last two, weighed by a learned weight of the
    # node (examples/levers/aggregation_mix.yaml), or `auto` (the default): NDDR's mixing in an MLP
    # space, the gate in a conv space (examples/levers/README.md, stop 35: NDDR won the tabular
    # generator and tied the real tables; in conv spaces it tied at twice the search's time)
    aggregation: Literal["auto", Aggregation] = "auto"
    # how an nddr node's mixing starts: torch's random weights, or the mean of its inputs (the sum
    # node it replaces, batch-normalised): the search then starts from the features of the sum
    nddr_start: Literal["random", "mean"] = "random"
    # what follows an nddr node's mixing (and mix's nddr half): MTL-NAS's batch norm, a per-sample layer
    # norm, or none (examples/levers/README.md measures each: none wins on penguins, layer on the generator)
    nddr_norm: NddrNorm = "batch"
    task_stages: int = Field(0, ge=0)  # the last k stages: a copy of their nodes per task (build-central)
    # where those copies go: in place of the shared nodes (`replace`), or beside them (`beside`), so
    # the search chooses per task and per node between its own copy and the shared node
    task_copies: Literal["replace", "beside"] = "replace"

    @model_validator(mode="after")
    def _stages_fit(self) -> "CentralSpec":
        if self.stages > self.nodes:
            raise ValueError(f"stages ({self.stages}) cannot exceed nodes ({self.nodes})")
        if self.task_stages > self.stages:
            raise ValueError(f"task_stages ({self.task_stages}) cannot exceed the {self.stages} stages")
        if isinstance(self.channels, list):
            if len(self.channels) != self.stages:
                raise ValueError(f"channels lists one width per stage: {self.stages} expected, "
                                 f"got {len(self.channels)}")
            if any(c < 1 for c in self.channels):
                raise ValueError("every channel count must be >= 1")
        elif self.channels < 1:
            raise ValueError("channels must be >= 1")
        return self

    def stage_channels(self) -> list[int]:
        return list(self.channels) if isinstance(self.channels, list) else [self.channels] * self.stages


class FlowRestrictionSpec(Strict):
    max_span: int | None = Field(3, ge=1)


class HeadsSpec(Strict):
    hidden: int = Field(64, ge=1)


class NetworkSpec(Strict):
    input: InputSpec | None = None
    stem: StemSpec = Field(default_factory=StemSpec)
    central: CentralSpec = Field(default_factory=CentralSpec)
    flow_restriction: FlowRestrictionSpec = Field(default_factory=FlowRestrictionSpec)
    read_in: bool = True
    read_out: bool = True
    heads: HeadsSpec = Field(default_factory=HeadsSpec)


# -- search and training --------------------------------------------------------------------------
class TemperatureSpec(Strict):
    start: float = Field(1.0, gt=0)
    end: float = Field(0.2, gt=0)
    schedule: Literal["exponential", "linear", "quadratic", "constant"] = "exponential"


class GatesSpec(Strict):
    init: float = 1.0
    init_noise: float = Field(0.0, ge=0)
    temperature: TemperatureSpec = Field(default_factory=TemperatureSpec)


class SqueezeSpec(Strict):
    """λ·[mean b(a) + ρ·mean c·a]. The binarising term's slope 4(1-2a) pushes a gate away from 1/2;
    ρ moves the tipping point to a = 1/2 + ρ/8: with ρ = 1 (the default) a gate above 0.625 is pushed
    to 1 and one below it to 0, so a gate that starts open (σ(1) = 0.73) stays open unless its task's
    loss pushes it down; with ρ ≥ 4 every gate decays unless the loss holds it up. The budget pass
    (fit-budget) still holds the compact network to its cost. ρ = 1 against the earlier 4, paired over
    seeds (examples/levers/README.md, stop 36): MultiMNIST +4.97, the generator at 0.1 +5.17, the other
    four task sets within noise. `kind`: the binarising term `binary` (4a(1−a)) or `entropy`; `flow`
    weighs the compactness term by 1 − φ_e/Φ, `cost` by the edge's MACs over the mean edge's
    (dagir.training.squeeze); `none` switches the squeeze off."""

    kind: Literal["binary", "entropy", "flow", "cost", "none"] = "binary"
    weight: float = Field(0.5, ge=0)
    rho: float = Field(1.0, ge=0)
    ramp: float = Field(0.5, ge=0, le=1)


class SharingSpec(Strict):
    """A term of the search that rewards tasks for agreeing on an edge, so sharing a state is
    chosen and not only inherited from the warm-up: `weight` · mean over edges and pairs of the
    tasks it serves of (g_e,t − g_e,t')². 0 switches it off."""

    weight: float = Field(0.0, ge=0)


class BudgetSpec(Strict):
    """A cost the compact network must not exceed (the `fit-budget` pass): multiply-accumulates
    per sample and/or parameters, as `dagir.compact_cost` counts them; `single_task`: what the
    single-task networks of this spec cost together (`dagir.pipeline.budget_limits`); null: no limit;
    `auto` (the default): `single_task` where the after-search pipeline has the fit-budget pass (the
    default pipeline does), null where it has not (on a spec without a budget the compact network of an
    MLP space grew to 1.5x the single-task networks; held to them it scored higher: stop 40).
    `search_rate` > 0 holds the budget inside the search too (`dagir.training.budget`): a multiplier per
    limit, climbing by `search_rate` times the overshoot (cost / limit − 1) over the whole search while
    the discretised gates cost more than the limit (and falling while they cost less), weighs the
    gates' expected cost in the architecture loss, so the gates choose what to drop; 0 (the default)
    leaves the budget to fit-budget alone."""

    macs: int | Literal["single_task", "auto"] | None = "auto"
    parameters: int | Literal["single_task", "auto"] | None = "auto"
    search_rate: float = Field(0.0, ge=0)

    @field_validator("macs", "parameters", mode="before")
    @classmethod
    def _limit(cls, value: Any) -> Any:
        if value is None or value in ("single_task", "auto") or (isinstance(value, int) and not isinstance(value, bool)
                                                                 and value >= 1):
            return value
        raise ValueError(f"must be a positive integer, 'single_task', 'auto' or null (got {value!r})")


class ReductionSpec(Strict):
    """After the search: `threshold` discretises the gates, `enabled` / `flow_budget` drive
    flow-reduce. `untie`: in the compact network, an op called on several states (tasks whose
    states differ there) gets a copy of its weights per state, each starting from the searched
    ones, so such tasks fine-tune weights of their own; the copies count in the parameters
    (and the budget). False: they share the op's weights, with batch norms of their own."""

    enabled: bool = True
    threshold: float = Field(0.5, gt=0, lt=1)
    flow_budget: float = Field(0.05, ge=0, lt=1)
    untie: bool = False


class SearchSpec(Strict):
    gates: GatesSpec = Field(default_factory=GatesSpec)
    squeeze: SqueezeSpec = Field(default_factory=SqueezeSpec)
    sharing: SharingSpec = Field(default_factory=SharingSpec)
    reduction: ReductionSpec = Field(default_factory=ReductionSpec)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)


class StageSpec(Strict):
    epochs: int = Field(2, ge=0)
    steps_per_epoch: int | None = Field(None, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    # auto: cosine (annealed to 0) in the run's final stage, constant in the others (TrainSpec)
    lr_schedule: Literal["auto", "constant", "cosine"] = "auto"
    weight_decay: float = Field(0.0, ge=0)


class WarmupStageSpec(StageSpec):
    """The warm-up. `edge_dropout`: the chance that each bernoulli gate of each task is 0 in a
    step, so the warm-up trains many sub-networks (per-task paths, not only the fully shared
    network) and the search compares edges that were trained without one another; 0 trains the
    whole supernet every step (every gate 1)."""

    edge_dropout: float = Field(0.0, ge=0, lt=1)


class SearchStageSpec(StageSpec):
    """The search stage. `strategy` (DESIGN §9): `gradient` (`mode` joint or alternating) or
    `reinforce`. `split`: the fraction of the training set held out for the architecture steps
    (alternating, reinforce; MTL-NAS: 0.5), None for one split. The relaxations say what the
    supernet computes in each step (MTL-NAS: relaxed-bernoulli for weights, sigmoid for the
    architecture); `arch_tau` fixes τ in the architecture step (None: the schedule's). `select`:
    the search ends with its last decisions, or (`best`) with those of the epoch whose discretised
    network (every decision at its hard value) did best on validation, so a squeeze that goes on
    closing gates the tasks need cannot take the architecture past its best. `arch_norm`: what
    batch norm normalises with in an alternating architecture step while Θ trains: the batch's
    statistics (`batch`), or its running statistics (`running`). With the batch's, an edge op's
    batch norm undoes any scaling of the state it reads, so the task losses cannot tell a node whose
    in-gates all shrink from one whose gates stay open, and the squeeze closes whole nodes at no
    cost; with the running statistics the architecture step sees what a gate's size does.
    `select_norm_batches`: with `select: best`, the batches of the training split over which batch
    norm's statistics are estimated afresh for each discretised network scored (its running
    statistics come from the relaxed supernet, or the warm-up with frozen Θ); 0 scores it with them."""

    train_weights: bool = False
    arch_norm: Literal["batch", "running"] = "batch"
    select: Literal["last", "best"] = "last"
    select_norm_batches: int = Field(0, ge=0)
    strategy: Literal["gradient", "reinforce"] = "gradient"
    mode: Literal["joint", "alternating"] = "joint"
    split: float | None = Field(None, gt=0, lt=1)
    weight_relaxation: Literal["sigmoid", "relaxed-bernoulli"] = "sigmoid"
    arch_relaxation: Literal["sigmoid", "relaxed-bernoulli"] = "sigmoid"
    arch_tau: float | None = Field(None, gt=0)
    gate_lr: float = Field(0.05, gt=0)
    gate_betas: tuple[float, float] = (0.9, 0.999)
    gate_weight_decay: float = Field(0.0, ge=0)
    reward_decay: float = Field(0.9, ge=0, lt=1)

    @field_validator("gate_betas")
    @classmethod
    def _betas(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"gate_betas must lie in [0, 1) (got {list(betas)})")
        return betas


class FinetuneStageSpec(StageSpec):
    """The fine-tune of the compact network. `weights`: where its weights start: `searched`, the
    supernet's (the method's weight sharing: what the warm-up and the search trained), or `fresh`,
    a new initialisation of the same architecture (as DARTS-style searches retrain what they found),
    so the fine-tune keeps the architecture and nothing the shared warm-up learned."""

    weights: Literal["searched", "fresh"] = "searched"


class LossWeightingSpec(Strict):
    """How the task losses are combined (`dagir.training.weighting`): `sum` of w_t·L_t, `uw`
    (uncertainty weighting; its log-variances learn at `lr`) or `dwa` (dynamic weight average at
    `temperature`; the default: it won on MultiMNIST and tied on the small task sets,
    examples/levers/README.md)."""

    kind: Literal["sum", "uw", "dwa"] = "dwa"
    lr: float = Field(0.01, gt=0)
    temperature: float = Field(2.0, gt=0)
    # how the weighted task losses' gradients on the weights are combined (`dagir.training.descent`):
    # `none`, the combined loss's gradient, or Jacobian descent with one of TorchJD's aggregators
    aggregator: Literal["none", "upgrad", "dualproj", "mgda", "pcgrad", "imtl_g", "aligned_mtl"] = "none"

    @model_validator(mode="after")
    def _aggregator_can_run(self) -> "LossWeightingSpec":
        if self.aggregator == "none":
            return self
        if self.kind == "uw":
            raise ValueError("aggregator needs a weighting without parameters of its own (sum or dwa): "
                             "uw learns its log-variances from the combined loss's gradient, which Jacobian "
                             "descent does not form")
        if self.aggregator in ("upgrad", "dualproj") and not all(
                importlib.util.find_spec(name) for name in ("quadprog", "qpsolvers")):
            raise ValueError(f"aggregator {self.aggregator!r} needs the quadprog solver: "
                             "pip install 'dagir[jacobian]'")
        return self


STAGES: tuple[str, ...] = ("warmup", "search", "finetune")  # the training stages, in the order they run


class TrainSpec(Strict):
    warmup: WarmupStageSpec = Field(default_factory=lambda: WarmupStageSpec(epochs=3))
    search: SearchStageSpec = Field(default_factory=lambda: SearchStageSpec(epochs=3))
    finetune: FinetuneStageSpec = Field(default_factory=lambda: FinetuneStageSpec(epochs=2, lr=5e-4))
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["float32", "float64", "bfloat16", "float16"] = "float32"
    checkpoint_every: int = Field(200, ge=1)
    # a checkpoint (every `checkpoint_every` steps and after every epoch) is skipped while the last one is
    # younger than this, but a stage's last epoch always writes one: an interrupted run loses at most this
    # much training; 0 writes every one (on the small tables writing them took a fifth of the training time)
    checkpoint_seconds: float = Field(60.0, ge=0)
    loss_weighting: LossWeightingSpec = Field(default_factory=LossWeightingSpec)
    select: Literal["last", "best"] = "last"  # the final stage keeps its last epoch, or its best on validation
    compile: bool = False  # torch.compile the compact network for fine-tuning and evaluation
    compile_supernet: bool = False  # torch.compile the supernet for the warm-up and the search (and their validation)
    channels_last: bool = False  # image inputs and conv weights in channels-last memory order
    restart: int = Field(0, ge=0)  # k > 0: another start of the run, its weights drawn anew; data split and batch order kept

    def final_stage(self) -> str:
        """The last stage that trains (the one whose weights the exported network keeps)."""
        return next((name for name in reversed(STAGES) if getattr(self, name).epochs > 0), "warmup")

    @model_validator(mode="after")
    def _aggregator_without_float16(self) -> "TrainSpec":
        if self.loss_weighting.aggregator != "none" and self.precision == "float16":
            raise ValueError("loss_weighting.aggregator does not run under float16 gradient scaling: "
                             "use precision bfloat16 or float32")
        return self

    @model_validator(mode="after")
    def _anneal_the_final_stage(self) -> "TrainSpec":
        """A stage's `lr_schedule: auto` (the default) is `cosine` in the final stage, whose weights the
        exported network keeps, and `constant` in the others; the resolved spec records which. Annealed,
        the final stage ends without the loss spikes a constant rate leaves in its last epochs; annealing
        the warm-up and search too stops the weights adapting while the gates still move (measured:
        examples/levers/README.md, stops 27 and 41)."""
        final = self.final_stage()
        for name in STAGES:
            stage = getattr(self, name)
            if stage.lr_schedule == "auto":
                stage.lr_schedule = "cosine" if name == final else "constant"
        return self


class PipelineSpec(Strict):
    before_search: list[str] | None = None
    after_search: list[str] | None = None


class BenchSpec(Strict):
    """What `dagir bench` compares: built-in methods (`dagir.methods.BUILT_IN`) or method spec files."""

    methods: list[str] = Field(
        default_factory=lambda: ["searched", "mtl_nas", "single_task", "hard_sharing", "cross_stitch"], min_length=1)
    seeds: int = Field(1, ge=1)


class LimitsSpec(Strict):
    """Bounds on what a spec may ask for, checked when it is loaded, so a typo (a width of 10^12,
    10^8 nodes) fails at once and says which bound it hit; raise a bound here to go past it."""

    nodes: int = Field(1024, ge=1)
    edges: int = Field(100_000, ge=1)
    width: int = Field(16384, ge=1)
    parameters: int = Field(2_000_000_000, ge=1)


class Spec(Strict):
    name: str = "dagir"
    seed: int = Field(0, ge=0, lt=2 ** 63)  # what torch's and numpy's generators take
    data: DataSpec = Field(default_factory=DataSpec)
    tasks: list[TaskSpec] = Field(min_length=1)
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    pipeline: PipelineSpec = Field(default_factory=PipelineSpec)
    bench: BenchSpec = Field(default_factory=BenchSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    _source: "SpecSource | None" = PrivateAttr(None)

    @field_validator("tasks")
    @classmethod
    def _unique_task_names(cls, tasks: list[TaskSpec]) -> list[TaskSpec]:
        seen: set[str] = set()
        for task in tasks:
            if task.name in seen:
                raise ValueError(f"duplicate task name {task.name!r}")
            seen.add(task.name)
        return tasks

    @model_validator(mode="after")
    def _budget_where_fitted(self) -> "Spec":
        """A budget of `auto` is `single_task` where the after-search pipeline meets budgets (has the
        fit-budget pass), none where it does not; the resolved spec records which."""
        from .pass_manager import names_pass

        after = self.pipeline.after_search
        fitted = after is None or names_pass(after, "fit-budget")
        budget = self.search.budget
        for name in ("macs", "parameters"):
            if getattr(budget, name) == "auto":
                setattr(budget, name, "single_task" if fitted else None)
        return self

    def resolved_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def resolved_yaml(self) -> str:
        """The spec with every default filled in, as written to `spec.resolved.yaml` beside every output."""
        import yaml
        return yaml.safe_dump(self.resolved_dict(), sort_keys=False)

    def error(self, path: tuple[str | int, ...], message: str) -> SpecError:
        """A `SpecError` pointing at `path` in the file this spec was read from (if any)."""
        if self._source is None:
            return SpecError(message, field=format_path(path) or None)
        return self._source.error(path, message)


# -- loading --------------------------------------------------------------------------------------
class SpecSource:
    """Where a spec came from, to point errors at file, line and column."""

    def __init__(self, file: str, locations: dict[FieldPath, Location],
                 overrides: dict[FieldPath, str] | None = None) -> None:
        self.file, self.locations, self.overrides = file, locations, overrides or {}

    def error(self, path: FieldPath, message: str) -> SpecError:
        """An error at `path`: at the `--set` that gave it (or made it, a key the file lacks), else in the file."""
        key = tuple(str(p) for p in path)
        for prefix, assignment in self.overrides.items():
            if key[:len(prefix)] == prefix or (prefix[:len(key)] == key and tuple(path) not in self.locations):
                return SpecError(message, file=f"--set {assignment}", field=format_path(path) or None)
        where = locate(path, self.locations)
        line, column = where if where else (None, None)
        return SpecError(message, file=self.file, line=line, column=column, field=format_path(path) or None)


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Spec:
    """Read, override and validate a spec file; checks that need the data registry come after.

    >>> spec = load_spec("examples/multimnist.yaml", ["train.search.epochs=1"])  # doctest: +SKIP
    """
    data, locations, file = read_spec_file(path)
    if not isinstance(data, dict):
        raise SpecError("a spec is a mapping of sections (name, data, tasks, network, ...)", file=file,
                        line=1, column=1)
    for assignment in overrides:
        apply_override(data, assignment)
    overridden = {tuple(a.partition("=")[0].strip().split(".")): a for a in overrides}
    source = SpecSource(file, locations, overridden)
    spec = validate_spec(data, source)
    spec._source = source
    from .spec_checks import check_spec_semantics  # they build the IR: modules above this one
    check_spec_semantics(spec, source)
    return spec


def validate_spec(data: dict[str, Any], source: SpecSource) -> Spec:
    try:
        return Spec.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        path = tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        raise source.error(path, _describe(first)) from None


def _describe(error: dict[str, Any]) -> str:
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    shown = f" (got {_shorten(repr(value))})" if not isinstance(value, (dict, list)) else ""
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "field required"
    if kind in ("greater_than_equal", "greater_than", "less_than", "less_than_equal"):
        sign = {"greater_than_equal": ">=", "greater_than": ">", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()))
        return f"must be {sign} {bound}{shown}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}{shown}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    message = error["msg"].rstrip(".")
    return f"{message[:1].lower()}{message[1:]}{shown}"  # pydantic capitalises; a pattern keeps its case


def _shorten(text: str, limit: int = 80) -> str:
    """A value as an error shows it: long ones cut in the middle, so a message stays one line."""
    return text if len(text) <= limit else f"{text[:limit // 2]}…{text[-limit // 4:]} ({len(text):,} characters)"


def input_shape(spec: Spec) -> tuple[int, ...]:
    """The input type: written in the spec, or else the data set's."""
    if spec.network.input is not None:
        return tuple(spec.network.input.shape)
    from .datasets import dataset_info
    info = dataset_info(spec.data.dataset)
    assert info is not None
    return info.input_shape(spec.data.options, spec.data.root, [task.name for task in spec.tasks])
