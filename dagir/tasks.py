"""Task kinds: their losses, their metrics, whether each metric is better high or low, and Δ_MTL.

A task's kind (classification, multilabel, regression, segmentation, depth, normals) fixes its
default loss and metrics; a spec may pick another loss or metric the kind offers. The first
metric of a kind is its primary one: the one Δ_MTL compares (DESIGN §8) unless the spec names
another. `task_misfits` checks a spec's tasks against a data set before anything is loaded.

Tensor shapes, batch first:

| kind           | output             | target                              | loss (default first)      |
|----------------|--------------------|-------------------------------------|---------------------------|
| classification | [B, C] logits      | [B] class index                     | cross_entropy             |
| multilabel     | [B, L] logits      | [B, L] in {0, 1}                    | bce (with logits)         |
| regression     | [B, 1] or [B, D]   | same number of elements             | mse, l1                   |
| segmentation   | [B, C, H, W]       | [B, H, W]; 255 or negative = void   | cross_entropy (void off)  |
| depth          | [B, 1, H, W]       | [B, 1, H, W] or [B, H, W]; <= 0 void| l1 on valid pixels        |
| normals        | [B, 3, H, W]       | [B, 3, H, W]; zero vector = void    | cosine (1 - cos)          |

Metrics are accumulated over a whole split with a `MetricMeter` (sums and a confusion matrix, not a
mean of batch means), so they do not depend on the batch size.

The catalogue is plain Python; torch is imported only inside the functions that compute, so spec
checking stays light.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence

from .errors import UserError

if TYPE_CHECKING:
    import torch

    from .datasets import DatasetInfo

VOID_LABEL = 255  # segmentation pixels with this label (or a negative one) count for nothing
IGNORED_CLASS = -100  # a classification target for a sample the task has no label for
NORMAL_ANGLE_BIN = 0.01  # degrees; the median angle is exact to half a bin


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool


@dataclass(frozen=True)
class TaskKind:
    """What a kind offers: its losses (the first is the default) and metrics (the first is primary)."""

    losses: tuple[str, ...]
    metrics: tuple[Metric, ...]
    dense: bool  # per-pixel targets: needs image data

    def metric(self, name: str) -> Metric | None:
        return next((metric for metric in self.metrics if metric.name == name), None)


TASK_KINDS: dict[str, TaskKind] = {
    "classification": TaskKind(("cross_entropy",), (Metric("accuracy", True),), dense=False),
    "multilabel": TaskKind(("bce",), (Metric("f1", True), Metric("accuracy", True)), dense=False),
    "regression": TaskKind(("mse", "l1"), (Metric("mae", False), Metric("rmse", False)), dense=False),
    "segmentation": TaskKind(("cross_entropy",), (Metric("miou", True), Metric("pixel_accuracy", True)),
                             dense=True),
    "depth": TaskKind(("l1",), (Metric("abs_err", False), Metric("rel_err", False), Metric("delta1", True)),
                      dense=True),
    "normals": TaskKind(("cosine",), (Metric("mean_angle", False), Metric("median_angle", False),
                                      Metric("within_11_25", True), Metric("within_22_5", True),
                                      Metric("within_30", True)), dense=True),
}


def task_kind(kind: str) -> TaskKind:
    if kind not in TASK_KINDS:
        raise UserError(f"unknown task kind {kind!r} (known: {', '.join(TASK_KINDS)})")
    return TASK_KINDS[kind]


def default_loss(kind: str) -> str:
    return task_kind(kind).losses[0]


def primary_metric(kind: str, metric: str | None = None) -> tuple[str, bool]:
    """The metric that ranks a task, `(name, higher_is_better)`: `metric` if given, else the kind's first.

    >>> primary_metric("segmentation")
    ('miou', True)
    >>> primary_metric("regression")
    ('mae', False)
    """
    info = task_kind(kind)
    chosen = info.metrics[0] if metric is None else info.metric(metric)
    if chosen is None:
        raise UserError(f"a {kind} task has no metric {metric!r} "
                        f"(its metrics: {', '.join(m.name for m in info.metrics)})")
    return chosen.name, chosen.higher_is_better


def higher_is_better(kind: str, metric: str) -> bool:
    return primary_metric(kind, metric)[1]


# -- losses ---------------------------------------------------------------------------------------
def task_loss(kind: str, output: "torch.Tensor", target: "torch.Tensor",
              loss: str | None = None) -> "torch.Tensor":
    """The mean loss of one batch, by the kind's default loss or the named `loss`.

    >>> import torch
    >>> float(task_loss("regression", torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [1.0]])))
    2.5
    """
    name = loss or default_loss(kind)
    if name not in task_kind(kind).losses:
        raise UserError(f"a {kind} task has no loss {name!r} "
                        f"(its losses: {', '.join(TASK_KINDS[kind].losses)})")
    return _LOSSES[(kind, name)](output, target)


def _classification_cross_entropy(output: "torch.Tensor", target: "torch.Tensor") -> "torch.Tensor":
    from torch.nn import functional

    target = target.long().reshape(-1)
    if not bool((target != IGNORED_CLASS).any()):  # a batch where this task has no labelled sample
        return output.sum() * 0.0
    return functional.cross_entropy(output, target, ignore_index=IGNORED_CLASS)


def _multilabel_bce(output: "torch.Tensor", target: "torch.Tensor") -> "torch.Tensor":
    from torch.nn import functional

    return functional.binary_cross_entropy_with_logits(output, target.to(output.dtype))


def _regression_mse(output: "torch.Tensor", target: "torch.Tensor") -> "torch.Tensor":
    from torch.nn import functional

    return functional.mse_loss(_like_target(output, target), target.to(output.dtype))


def _regression_l1(output: "torch.Tensor", target: "torch.Tensor") -> "torch.Tensor":
    from torch.nn import functional

    return functional.l1_loss(_like_target(output, target), target.to(output.dtype))


def _segmentation_cross_entropy(output: "torch.Tensor", target: "torch.Tensor") -> "torch.Tensor":
    from torch.nn import functional

    labels = target.long().masked_fill(target < 0, VOID_LABEL)
    if not bool((labels != VOID_LABEL).any()):
        return output.sum() * 0.0  # an all-void batch teaches nothing; cross_entropy would give NaN
    return functional.cross_entropy(output, labels, ignore_index=VOID_LABEL)


def _depth_l1(output: "torch.Tensor", target: "torch.Tensor") -> "torch.Tensor":
    predicted = _like_target(output, target)
    valid = _valid_depth(target)
    if not bool(valid.any()):
        return output.sum() * 0.0
    return (predicted[valid] - target[valid].to(output.dtype)).abs().mean()


def _normals_cosine(output: "torch.Tensor", target: "torch.Tensor") -> "torch.Tensor":
    cosine, valid = _normal_cosines(output, target)
    if not bool(valid.any()):
        return output.sum() * 0.0
    return (1.0 - cosine[valid]).mean()


_LOSSES: dict[tuple[str, str], Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]] = {
    ("classification", "cross_entropy"): _classification_cross_entropy,
    ("multilabel", "bce"): _multilabel_bce,
    ("regression", "mse"): _regression_mse,
    ("regression", "l1"): _regression_l1,
    ("segmentation", "cross_entropy"): _segmentation_cross_entropy,
    ("depth", "l1"): _depth_l1,
    ("normals", "cosine"): _normals_cosine,
}


def _like_target(output: "torch.Tensor", target: "torch.Tensor") -> "torch.Tensor":
    """`output` in the target's shape: a head's [B, 1] against a target [B], say."""
    if output.shape == target.shape:
        return output
    if output.numel() != target.numel():
        raise ValueError(f"output {tuple(output.shape)} does not match target {tuple(target.shape)}")
    return output.reshape(target.shape)


def _valid_depth(target: "torch.Tensor") -> "torch.Tensor":
    import torch

    return (target > 0) & torch.isfinite(target)


def _normal_cosines(output: "torch.Tensor", target: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """Per-pixel cosine between predicted and true normals [B, H, W], and where the truth is valid."""
    from torch.nn import functional

    if output.shape != target.shape or output.dim() < 2 or output.shape[1] != 3:
        raise ValueError(f"normals need output and target [B, 3, H, W]; got {tuple(output.shape)} "
                         f"and {tuple(target.shape)}")
    target = target.to(output.dtype)
    valid = target.norm(dim=1) > 1e-6
    cosine = (functional.normalize(output, dim=1) * functional.normalize(target, dim=1)).sum(dim=1)
    return cosine.clamp(-1.0, 1.0), valid


# -- metrics --------------------------------------------------------------------------------------
class MetricMeter:
    """Accumulates one task's metrics over a split, batch by batch.

    Sums and counts (and for segmentation a confusion matrix) are kept in float64 on the CPU, so
    the result is the metric of the whole split whatever the batching. `scale` multiplies errors
    of regression targets that the loader scaled (see `TaskData.target_scales`), to report them in
    natural units.

    >>> import torch
    >>> meter = MetricMeter("classification")
    >>> meter.update(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
    >>> meter.update(torch.tensor([[0.0, 3.0]]), torch.tensor([1]))
    >>> meter.compute()
    {'accuracy': 0.6666666666666666}
    """

    def __init__(self, kind: str, scale: float = 1.0) -> None:
        task_kind(kind)
        self.kind, self.scale = kind, scale
        self.sums: dict[str, Any] = {}

    def _add(self, name: str, value: Any) -> None:
        value = value.detach().double().cpu() if hasattr(value, "detach") else float(value)
        self.sums[name] = self.sums[name] + value if name in self.sums else value

    def update(self, output: "torch.Tensor", target: "torch.Tensor") -> None:
        import torch

        with torch.no_grad():
            getattr(self, f"_update_{self.kind}")(output.detach(), target.detach())

    def reduce(self, sum_: "Callable[[torch.Tensor], torch.Tensor]") -> None:
        """Sum the sums with other processes' (`sum_` all-reduces a tensor in place): a run on
        several processes evaluates a share of the split on each. Every process calls this once,
        with the same sums (the same updates were made on each)."""
        import torch

        for name in sorted(self.sums):
            value = self.sums[name]
            tensor = value.clone() if hasattr(value, "detach") else torch.tensor(value, dtype=torch.float64)
            summed = sum_(tensor)
            self.sums[name] = summed if hasattr(value, "detach") else float(summed)

    def compute(self) -> dict[str, float]:
        """The metrics so far; NaN where nothing valid was seen."""
        return getattr(self, f"_compute_{self.kind}")()

    def _ratio(self, numerator: str, denominator: str) -> float:
        below = float(self.sums.get(denominator, 0.0))
        return float(self.sums.get(numerator, 0.0)) / below if below > 0 else math.nan

    # classification
    def _update_classification(self, output: "torch.Tensor", target: "torch.Tensor") -> None:
        target = target.reshape(-1)
        labelled = target != IGNORED_CLASS  # samples of other tasks (e.g. another Omniglot alphabet)
        self._add("correct", (output.argmax(dim=1)[labelled] == target[labelled]).sum())
        self._add("count", labelled.sum())

    def _compute_classification(self) -> dict[str, float]:
        return {"accuracy": self._ratio("correct", "count")}

    # multilabel: micro-averaged F1 and per-label accuracy, at logit 0 (probability 0.5)
    def _update_multilabel(self, output: "torch.Tensor", target: "torch.Tensor") -> None:
        predicted, truth = output > 0, target > 0.5
        self._add("true_positive", (predicted & truth).sum())
        self._add("false_positive", (predicted & ~truth).sum())
        self._add("false_negative", (~predicted & truth).sum())
        self._add("correct", (predicted == truth).sum())
        self._add("count", truth.numel())

    def _compute_multilabel(self) -> dict[str, float]:
        true_positive = float(self.sums.get("true_positive", 0.0))
        errors = float(self.sums.get("false_positive", 0.0)) + float(self.sums.get("false_negative", 0.0))
        denominator = 2 * true_positive + errors
        f1 = 2 * true_positive / denominator if denominator > 0 else math.nan
        return {"f1": f1, "accuracy": self._ratio("correct", "count")}

    # regression
    def _update_regression(self, output: "torch.Tensor", target: "torch.Tensor") -> None:
        error = _like_target(output, target).double() - target.double()
        self._add("absolute", error.abs().sum())
        self._add("squared", (error * error).sum())
        self._add("count", error.numel())

    def _compute_regression(self) -> dict[str, float]:
        mean_squared = self._ratio("squared", "count")
        return {"mae": self._ratio("absolute", "count") * self.scale,
                "rmse": math.sqrt(mean_squared) * self.scale}

    # segmentation: a confusion matrix over valid pixels (rows: truth, columns: prediction)
    def _update_segmentation(self, output: "torch.Tensor", target: "torch.Tensor") -> None:
        import torch

        classes = output.shape[1]
        predicted = output.argmax(dim=1).reshape(-1)
        truth = target.long().reshape(-1)
        valid = (truth >= 0) & (truth != VOID_LABEL)
        if bool((truth[valid] >= classes).any()):
            raise ValueError(f"segmentation target has labels >= {classes} classes that are not void "
                             f"({VOID_LABEL})")
        cells = truth[valid] * classes + predicted[valid]
        self._add("confusion", torch.bincount(cells, minlength=classes * classes).reshape(classes, classes))

    def _compute_segmentation(self) -> dict[str, float]:
        confusion = self.sums.get("confusion")
        if confusion is None or float(confusion.sum()) == 0:
            return {"miou": math.nan, "pixel_accuracy": math.nan}
        hits = confusion.diagonal()
        union = confusion.sum(dim=0) + confusion.sum(dim=1) - hits
        present = union > 0  # a class neither present nor predicted has no IoU
        return {"miou": float((hits[present] / union[present]).mean()),
                "pixel_accuracy": float(hits.sum() / confusion.sum())}

    # depth: over valid pixels only
    def _update_depth(self, output: "torch.Tensor", target: "torch.Tensor") -> None:
        import torch

        predicted = _like_target(output, target).double()
        truth = target.double()
        valid = _valid_depth(truth)
        predicted, truth = predicted[valid], truth[valid]
        error = (predicted - truth).abs()
        positive = predicted.clamp_min(1e-9)  # a non-positive prediction is never within 1.25x
        ratio = torch.maximum(positive / truth, truth / positive)
        self._add("absolute", error.sum())
        self._add("relative", (error / truth).sum())
        self._add("within_1_25", (ratio < 1.25).sum())
        self._add("count", truth.numel())

    def _compute_depth(self) -> dict[str, float]:
        return {"abs_err": self._ratio("absolute", "count"), "rel_err": self._ratio("relative", "count"),
                "delta1": self._ratio("within_1_25", "count")}

    # normals: angle between predicted and true normals, in degrees, over valid pixels
    def _update_normals(self, output: "torch.Tensor", target: "torch.Tensor") -> None:
        import torch

        cosine, valid = _normal_cosines(output.double(), target.double())
        angle = torch.rad2deg(torch.acos(cosine[valid]))
        bins = int(round(180 / NORMAL_ANGLE_BIN))
        index = (angle / NORMAL_ANGLE_BIN).long().clamp(0, bins - 1)
        self._add("angle", angle.sum())
        self._add("histogram", torch.bincount(index, minlength=bins))
        for threshold in (11.25, 22.5, 30):
            self._add(f"within_{threshold}", (angle < threshold).sum())
        self._add("count", angle.numel())

    def _compute_normals(self) -> dict[str, float]:
        count = float(self.sums.get("count", 0.0))
        median = math.nan
        if count > 0:
            cumulative = self.sums["histogram"].cumsum(0)
            middle = int((cumulative >= count / 2).nonzero()[0])
            median = (middle + 0.5) * NORMAL_ANGLE_BIN
        return {"mean_angle": self._ratio("angle", "count"), "median_angle": median,
                "within_11_25": self._ratio("within_11.25", "count"),
                "within_22_5": self._ratio("within_22.5", "count"),
                "within_30": self._ratio("within_30", "count")}


def task_metrics(kind: str, outputs: "torch.Tensor", targets: "torch.Tensor",
                 scale: float = 1.0) -> dict[str, float]:
    """The kind's metrics of `outputs` against `targets`, all samples at once (a one-batch `MetricMeter`).

    >>> import torch
    >>> task_metrics("regression", torch.tensor([[0.5], [1.0]]), torch.tensor([[0.0], [1.0]]), scale=18)
    {'mae': 4.5, 'rmse': 6.3639610306789285}
    """
    meter = MetricMeter(kind, scale=scale)
    meter.update(outputs, targets)
    return meter.compute()


# -- the multi-task summary -----------------------------------------------------------------------
def delta_mtl(metrics: Mapping[str, Mapping[str, float] | float],
              single_task_metrics: Mapping[str, Mapping[str, float] | float],
              kinds: Mapping[str, str], metric_names: Mapping[str, str | None] | None = None) -> float:
    """Δ_MTL in percent (DESIGN §8): the mean relative gain of each task over its single-task network.

    `Δ = (1/T) Σ_t (-1)^{l_t} (M_t - M_t^single) / M_t^single × 100`, with `l_t = 1` where lower is
    better, so a positive Δ means multi-task learning helped. Each task is scored by its primary
    metric, or by `metric_names[task]`; a task's metrics may be a dict of metrics or one number.

    >>> delta_mtl({"a": 0.9, "b": 1.0}, {"a": 0.8, "b": 2.0}, {"a": "classification", "b": "regression"})
    31.25
    """
    if not kinds:
        raise ValueError("delta_mtl needs at least one task")
    total = 0.0
    for task, kind in kinds.items():
        name, higher = primary_metric(kind, (metric_names or {}).get(task))
        multi_task = _metric_value(metrics, task, name)
        single_task = _metric_value(single_task_metrics, task, name)
        if single_task == 0:
            raise ValueError(f"task {task!r}: the single-task {name} is 0, "
                             "so the relative change is undefined")
        sign = 1.0 if higher else -1.0
        total += sign * (multi_task - single_task) / abs(single_task) * 100.0
    return total / len(kinds)


def _metric_value(metrics: Mapping[str, Mapping[str, float] | float], task: str, name: str) -> float:
    if task not in metrics:
        raise ValueError(f"no metrics for task {task!r}")
    value = metrics[task]
    if isinstance(value, Mapping):
        if name not in value:
            raise ValueError(f"task {task!r} has no metric {name!r} (has: {', '.join(value)})")
        return float(value[name])
    return float(value)


# -- tasks against a data set ---------------------------------------------------------------------
class TaskLike(Protocol):
    """What `task_misfits` reads from a task: `dagir.spec.TaskSpec` fits."""

    name: str
    kind: str
    classes: int | None
    loss: str | None
    metric: str | None


@dataclass(frozen=True)
class TaskMisfit:
    """One way a task does not fit: `tasks[index].field` and why, to point an error at the spec."""

    index: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"tasks[{self.index}].{self.field}: {self.message}"


def task_misfits(dataset: "DatasetInfo", tasks: Sequence[TaskLike]) -> list[TaskMisfit]:
    """Every way `tasks` do not fit `dataset`: unknown task names, wrong kinds or class counts,
    losses or metrics the kind does not offer."""
    misfits: list[TaskMisfit] = []
    offered = dict(dataset.task_kinds)
    for index, task in enumerate(tasks):
        def misfit(field: str, message: str) -> None:
            misfits.append(TaskMisfit(index, field, message))

        if task.kind not in TASK_KINDS:
            misfit("kind", f"unknown task kind {task.kind!r} (known: {', '.join(TASK_KINDS)})")
            continue
        info = TASK_KINDS[task.kind]
        if task.name not in offered:
            misfit("name", f"data set '{dataset.name}' has no task {task.name!r} "
                           f"(its tasks: {', '.join(f'{name} ({kind})' for name, kind in offered.items())})")
        elif offered[task.name] != task.kind:
            dense_note = " (it has no per-pixel targets)" if info.dense and not any(
                TASK_KINDS[kind].dense for kind in offered.values() if kind in TASK_KINDS) else ""
            hint = dataset.kind_hints.get(offered[task.name])
            misfit("kind", f"task {task.name!r} is {offered[task.name]} in data set '{dataset.name}', "
                           f"not {task.kind}{dense_note}" + (f" ({hint})" if hint else ""))
        elif task.name in dataset.task_classes and task.classes is not None and (
                task.classes < dataset.task_classes[task.name]
                or (task.classes > dataset.task_classes[task.name] and not dataset.classes_at_least)):
            seen = dataset.task_classes[task.name]
            misfit("classes", f"task {task.name!r} has labels up to {seen - 1} in data set '{dataset.name}' (classes "
                              f"are 0..K-1): classes must be at least {seen} (got {task.classes})"
                              if dataset.classes_at_least else
                              f"task {task.name!r} has {seen} classes in data set '{dataset.name}', not {task.classes}")
        if task.loss is not None and task.loss not in info.losses:
            misfit("loss", f"task {task.name!r}: a {task.kind} task has no loss {task.loss!r} "
                           f"(its losses: {', '.join(info.losses)})")
        if task.metric is not None and info.metric(task.metric) is None:
            misfit("metric", f"task {task.name!r}: a {task.kind} task has no metric {task.metric!r} "
                             f"(its metrics: {', '.join(m.name for m in info.metrics)})")
    return misfits
