"""`arrays`: a user's own data as NumPy arrays, no code: `data.root` is an `.npz` file or a folder
of `.npy` files holding `inputs` [N, ...] and one array per task, named after the task.

    data: {dataset: arrays, root: my_data.npz}        # inputs, and e.g. age [N] float, smoker [N] int
    tasks: [{name: age, kind: regression}, {name: smoker, kind: classification, classes: 2}]

A task's kind comes from its array: integers [N] are classification labels 0..K-1 (K = the largest
label + 1), floats [N] or [N, 1] a regression target. An optional `split` array (0/1/2 or
"train"/"val"/"test" per sample) fixes the splits; without one, `test_fraction` of the samples go
to test and `data.val_split` to validation, drawn with the run's seed. `options.inputs` and
`options.split` rename the two arrays.

The shapes and kinds are read from the array headers when the spec is loaded (nothing else is
read but the classification labels), so a spec that does not fit its data is rejected before any
training. A bad file — a missing or ragged array, NaN or infinite values, a negative label — is a
`UserError` naming the file, the array and the first bad row.

Inputs larger than memory stream: `.npy` files are memory-mapped, and with `options.in_memory:
false` (or `auto`, the default, when the inputs file is over a quarter of the memory available)
the splits keep the inputs on disk (`MappedRows`) and training reads one batch of rows at a time.
The values, and so the run, are the same either way. An `.npz` archive is always read into memory;
save the inputs as a `.npy` in a folder to stream them. The targets are always held in memory.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import UserError
from .splits import MappedRows, Split, TaskData, seeded_splits

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


class ArraySource:
    """The arrays under `root` (an `.npz` or a folder of `.npy`): their shapes and dtypes from the
    headers, and their values on demand (`.npy` memory-mapped)."""

    def __init__(self, root: str | None) -> None:
        if root is None:
            raise UserError("data set 'arrays' is read from disk: set data.root to an .npz file or a folder of .npy files")
        self.path = Path(root).expanduser()
        if self.path.is_dir():
            files = sorted(self.path.glob("*.npy"))
            if not files:
                raise UserError(f"data.root: folder {str(self.path)!r} holds no .npy files")
            self.headers = {file.stem: _npy_header(file) for file in files}
            self._files = {file.stem: file for file in files}
        elif self.path.is_file():
            try:
                with zipfile.ZipFile(self.path) as archive:
                    self.headers = {Path(name).stem: _header(archive.open(name), f"{self.path}:{name}")
                                    for name in archive.namelist() if name.endswith(".npy")}
            except zipfile.BadZipFile:
                raise UserError(f"{self.path}: not an .npz file (expected a NumPy archive of arrays)") from None
            self._files = {}
        else:
            raise UserError(f"data.root: {str(self.path)!r} does not exist (an .npz file or a folder of .npy files)")

    def mappable(self, name: str) -> bool:
        """Whether array `name` is a `.npy` file, read from disk a row at a time."""
        return name in self._files

    def nbytes(self, name: str) -> int:
        shape, dtype = self.headers[name]
        return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize

    def where(self, name: str) -> str:
        return str(self._files[name]) if name in self._files else f"{self.path} (array {name!r})"

    def read(self, name: str) -> np.ndarray:
        try:
            if name in self._files:
                return np.load(self._files[name], mmap_mode="r", allow_pickle=False)
            with np.load(self.path, allow_pickle=False) as archive:
                return archive[name]
        except ValueError as error:  # an object array would need a pickle: never loaded
            raise UserError(f"{self.where(name)}: cannot read ({error})") from None


def _npy_header(file: Path) -> tuple[tuple[int, ...], np.dtype]:
    with open(file, "rb") as handle:
        return _header(handle, str(file))


def _header(handle, where: str) -> tuple[tuple[int, ...], np.dtype]:
    readers = {1: np.lib.format.read_array_header_1_0, 2: np.lib.format.read_array_header_2_0}
    try:
        major, _ = np.lib.format.read_magic(handle)
        if major not in readers:
            raise ValueError(f"format version {major} is not read here; save with numpy.save")
        shape, _, dtype = readers[major](handle)
    except ValueError as error:
        raise UserError(f"{where}: not a NumPy array file ({error})") from None
    return tuple(shape), dtype


def layout(options: Mapping[str, Any], root: str | None) -> tuple[ArraySource, str, list[str]]:
    """The source, the inputs' name and the task arrays' names, checked against one another."""
    source = ArraySource(root)
    inputs = options["inputs"]
    if inputs not in source.headers:
        raise UserError(f"{source.path}: no array {inputs!r} for the inputs (arrays: {', '.join(source.headers)}; "
                        "name another with data.options.inputs)")
    count = source.headers[inputs][0][0] if source.headers[inputs][0] else 0
    tasks = [name for name in source.headers if name not in (inputs, options["split"])]
    for name, (shape, _) in source.headers.items():
        if not shape or shape[0] != count:
            raise UserError(f"{source.where(name)}: has {shape[0] if shape else 0} rows, but {inputs!r} has {count}; "
                            "every array holds one row per sample")
    return source, inputs, tasks


def task_kind(source: ArraySource, name: str) -> tuple[str, int | None]:
    """`(kind, classes)` of a task array: integer labels are classification, floats regression."""
    shape, dtype = source.headers[name]
    if np.issubdtype(dtype, np.integer) and len(shape) == 1:
        labels = np.asarray(source.read(name))
        if labels.size and labels.min() < 0:
            row = int(np.argmax(labels < 0))
            raise UserError(f"{source.where(name)}: row {row} has label {int(labels[row])}; labels are 0..K-1")
        return "classification", int(labels.max()) + 1 if labels.size else 1
    if np.issubdtype(dtype, np.floating) and (len(shape) == 1 or shape[1:] == (1,)):
        return "regression", None
    raise UserError(f"{source.where(name)}: a task array is integer labels [N] or a float target [N] or [N, 1] "
                    f"(got {dtype} {list(shape)})")


def tasks_for(options: Mapping[str, Any], root: str | None) -> tuple[dict[str, str], dict[str, int]]:
    source, _, tasks = layout(options, root)
    kinds, classes = {}, {}
    for name in tasks:
        kinds[name], count = task_kind(source, name)
        if count is not None:
            classes[name] = count
    return kinds, classes


def shape_for(options: Mapping[str, Any], root: str | None) -> tuple[int, ...]:
    source, inputs, _ = layout(options, root)
    shape = source.headers[inputs][0][1:]
    if not 1 <= len(shape) <= 3:
        raise UserError(f"{source.where(inputs)}: inputs are [N, features] or [N, channels, height, width] "
                        f"(got {list(source.headers[inputs][0])})")
    return tuple(int(side) for side in shape)


def load(options: Mapping[str, Any], root: str | None, val_split: float = 0.1, seed: int = 0) -> TaskData:
    source, inputs_name, tasks = layout(options, root)
    kinds, classes = tasks_for(options, root)
    raw = source.read(inputs_name)
    _check_finite(source, inputs_name, raw)
    streams = _streams(source, inputs_name, options["in_memory"])
    targets = {}
    for name in tasks:
        values = np.asarray(source.read(name))
        if kinds[name] == "classification":
            targets[name] = torch.from_numpy(values.astype(np.int64))
        else:
            values = values.astype(np.float32)
            _check_finite(source, name, values)
            targets[name] = torch.from_numpy(values.reshape(-1, 1))
    parts = _splits(source, options, len(raw), val_split, seed)
    whole = Split(MappedRows(raw), targets, torch.arange(len(raw))[:, None])
    splits = {name: whole.subset(rows) for name, rows in parts.items()}
    if not streams:  # each split's rows read into memory once, with no copy of the whole array beside them
        splits = {name: Split(split.inputs[0:len(split)], split.targets, split.source_ids)
                  for name, split in splits.items()}
    return TaskData("arrays", splits["train"], splits["val"], splits["test"], input_shape=tuple(raw.shape[1:]),
                    task_kinds=kinds, task_classes={t: classes.get(t) for t in tasks})


def _streams(source: ArraySource, name: str, in_memory: bool | str) -> bool:
    """Whether the inputs stay on disk: asked for, or (`auto`) a `.npy` over a quarter of free memory."""
    if not source.mappable(name) or in_memory is True:
        return False
    return in_memory is False or source.nbytes(name) > available_memory() // 4


def available_memory() -> int:
    """Bytes of memory available now (Linux and macOS; unknown elsewhere counts as plenty)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2 ** 62


def _check_finite(source: ArraySource, name: str, values: np.ndarray, chunk_bytes: int = 64 * 2 ** 20) -> None:
    """A `UserError` at the first row holding NaN or infinity; read `chunk_bytes` at a time, so a
    memory-mapped array is checked without being held in memory."""
    if not np.issubdtype(values.dtype, np.floating):
        return
    row_bytes = max(values[:1].nbytes, 1)
    step = max(chunk_bytes // row_bytes, 1)
    for start in range(0, len(values), step):
        chunk = np.asarray(values[start:start + step])
        bad = ~np.isfinite(chunk.reshape(len(chunk), -1)).all(axis=1)
        if bad.any():
            raise UserError(f"{source.where(name)}: row {start + int(np.argmax(bad))} holds NaN or infinity; "
                            "fill or drop missing values first")


def _splits(source: ArraySource, options: Mapping[str, Any], count: int, val_split: float,
            seed: int) -> dict[str, np.ndarray]:
    name = options["split"]
    if name not in source.headers:
        test = options["test_fraction"]
        return seeded_splits(count, test, val_split, seed)
    raw = codes = np.asarray(source.read(name))
    if codes.dtype.kind in "US":
        lookup = np.vectorize(lambda code: SPLIT_CODES.get(str(code), -1))
        codes = lookup(codes) if codes.size else codes.astype(np.int64)
    bad = ~np.isin(codes, list(SPLIT_CODES.values()))
    if bad.any():
        row = int(np.argmax(bad))
        raise UserError(f"{source.where(name)}: row {row} has split {raw[row].item()!r}; use 0/1/2 or train/val/test")
    parts = {part: np.flatnonzero(codes == code) for part, code in SPLIT_CODES.items()}
    for part, rows in parts.items():
        if not len(rows):
            raise UserError(f"{source.where(name)}: no sample in the {part} split")
    return parts
