"""NYUv2 in the preprocessed NumPy layout of MTAN, LibMTL and Auto-Lambda: segmentation, depth, normals.

The layout, one `.npy` file per sample and per modality, numbered from 0:

    root/train/{image,label,depth,normal}/<i>.npy     795 samples in the usual release
    root/val/{image,label,depth,normal}/<i>.npy       654 samples: dagir's *test* split

- image: [H, W, 3] or [3, H, W], float in [0, 1] (uint8 is divided by 255)
- label: [H, W] (or with a singleton channel axis), 13 classes; -1, any negative or 255 is void
- depth: [H, W], [1, H, W] or [H, W, 1]; 0 (or non-finite) is an invalid pixel
- normal: [H, W, 3] or [3, H, W], unit vectors in [-1, 1]; the zero vector is an invalid pixel

The release's `val` folder is the test split; validation is carved from `train` at random by `seed`
(fraction `val_split`). Every sample is resized to `resize` ([H, W]; null keeps the native 288x384):
labels by nearest neighbour, images bilinearly; depth and normals by a *masked* bilinear resize, so
an invalid pixel (0) is never averaged into a valid one, and normals are renormalised to unit length.
A resized pixel is valid where at least half of its filter weight fell on valid pixels. `limit`
(null for all) caps each split for quick runs: a random subset (by `seed`) of train and validation,
the first files of test.

Targets: `segmentation` [N, H, W] int64 (void 255, as `dagir.tasks.VOID_LABEL`), `depth`
[N, 1, H, W] float32, `normals` [N, 3, H, W] float32. `Split.source_ids` [N, 1] holds the file
index; test ids continue after the train folder's count, so ids are unique over the data set.

The reader here (`load_dense_layout`) also serves Cityscapes, which ships in the same layout.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.nn import functional

from ..errors import UserError
from ..tasks import VOID_LABEL
from .splits import Split, TaskData, partition, seeded_rng

NATIVE_SIZE = (288, 384)
CLASSES = 13
FOLDERS = {"image": "image", "segmentation": "label", "depth": "depth", "normals": "normal"}
TASK_KINDS = {"segmentation": "segmentation", "depth": "depth", "normals": "normals"}


def load(options: Mapping[str, Any], root: str | None = None, val_split: float = 0.1,
         seed: int = 0) -> TaskData:
    """NYUv2 from `root` in the MTAN layout, with tasks segmentation (13 classes), depth and normals.

    >>> data = load({"resize": [72, 96], "limit": 16}, root="data/nyuv2")  # doctest: +SKIP
    >>> data.train.targets["normals"].shape  # doctest: +SKIP
    torch.Size([16, 3, 72, 96])
    """
    return load_dense_layout("nyuv2", root, FOLDERS, TASK_KINDS, CLASSES, NATIVE_SIZE,
                             options["resize"], options["limit"], val_split, seed)


# -- the preprocessed NumPy layout, shared with Cityscapes ----------------------------------------
def load_dense_layout(dataset: str, root: str | None, folders: Mapping[str, str], task_kinds: Mapping[str, str],
                      classes: int, native_size: tuple[int, int], resize: Sequence[int] | None,
                      limit: int | None, val_split: float, seed: int) -> TaskData:
    """Read `root/{train,val}/<folder>/<i>.npy` for each role in `folders` ("image" and one per task).

    `task_kinds` maps each task (a key of `folders`) to segmentation, depth or normals.
    """
    base = require_folder(dataset, root, folders)
    train_indices = sample_indices(dataset, base / "train", folders)
    test_indices = sample_indices(dataset, base / "val", folders)
    parts = partition(len(train_indices), {"val": val_split, "train": 1.0 - val_split}, seed=seed)
    for name in ("train", "val"):
        if len(parts[name]) == 0:
            raise UserError(f"data set '{dataset}': {base / 'train'} holds {len(train_indices)} samples; "
                            f"data.val_split {val_split} leaves no {name} sample")
    size = tuple(native_size) if resize is None else (int(resize[0]), int(resize[1]))
    chosen = {name: train_indices[_at_most(parts[name], limit, seed, stream)]
              for stream, name in enumerate(("train", "val"), start=1)}
    chosen["test"] = test_indices[:limit]
    offsets = {"train": 0, "val": 0, "test": int(train_indices.max()) + 1}
    splits = {name: read_split(dataset, base / ("val" if name == "test" else "train"), folders, task_kinds,
                               chosen[name], classes, size, native_size if resize is None else None,
                               offsets[name])
              for name in ("train", "val", "test")}
    return TaskData(dataset, splits["train"], splits["val"], splits["test"], input_shape=(3, *size),
                    task_kinds=dict(task_kinds),
                    task_classes={task: classes if kind == "segmentation" else None
                                  for task, kind in task_kinds.items()})


def require_folder(dataset: str, root: str | None, folders: Mapping[str, str]) -> Path:
    """The data set's folder, or a `UserError` saying which layout was expected."""
    expected = f"root/{{train,val}}/{{{','.join(folders.values())}}}/<i>.npy"
    if root is None:
        raise UserError(f"data set '{dataset}' is read from disk: set data.root to a folder laid out as "
                        f"{expected}")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise UserError(f"data.root: folder {str(base)!r} for data set '{dataset}' does not exist "
                        f"(expected {expected})")
    return base


def sample_indices(dataset: str, split_folder: Path, folders: Mapping[str, str]) -> np.ndarray:
    """The sample indices of one split folder, sorted; every modality folder must hold the same ones."""
    found: dict[str, set[int]] = {}
    for folder in folders.values():
        path = split_folder / folder
        if not path.is_dir():
            raise UserError(f"data set '{dataset}': missing folder {path} (expected one .npy file per "
                            f"sample in each of {split_folder}/{{{','.join(folders.values())}}})")
        indices: set[int] = set()
        for file in path.iterdir():
            if file.name.startswith("."):
                continue
            match = re.fullmatch(r"(\d+)\.npy", file.name)
            if match is None:
                raise UserError(f"data set '{dataset}': unexpected file {file} (expected files named "
                                "<index>.npy, e.g. 0.npy)")
            indices.add(int(match.group(1)))
        if not indices:
            raise UserError(f"data set '{dataset}': folder {path} holds no <index>.npy files")
        found[folder] = indices
    first, reference = next(iter(found.items()))
    for folder, indices in found.items():
        if indices != reference:
            missing = sorted(reference ^ indices)[:5]
            raise UserError(f"data set '{dataset}': {split_folder / folder} holds {len(indices)} samples but "
                            f"{split_folder / first} holds {len(reference)}; every modality needs the same "
                            f"<index>.npy files (unmatched: {', '.join(map(str, missing))}"
                            f"{' ...' if len(reference ^ indices) > 5 else ''})")
    return np.array(sorted(reference), dtype=np.int64)


def _at_most(positions: np.ndarray, limit: int | None, seed: int, stream: int) -> np.ndarray:
    """`positions`, or a random subset of `limit` of them (sorted) drawn from `seed`."""
    if limit is None or len(positions) <= limit:
        return positions
    return np.sort(seeded_rng(seed, stream).choice(positions, size=limit, replace=False))


def read_split(dataset: str, split_folder: Path, folders: Mapping[str, str], task_kinds: Mapping[str, str],
               indices: np.ndarray, classes: int, size: tuple[int, int], required_size: tuple[int, int] | None,
               id_offset: int) -> Split:
    """Load, check and resize every sample of `indices` into preallocated arrays."""
    count, (height, width) = len(indices), size
    inputs = np.empty((count, 3, height, width), dtype=np.float32)
    shapes = {"segmentation": (height, width), "depth": (1, height, width), "normals": (3, height, width)}
    targets = {task: np.empty((count, *shapes[kind]), dtype=np.int64 if kind == "segmentation" else np.float32)
               for task, kind in task_kinds.items()}
    for row, index in enumerate(indices.tolist()):
        files = {role: split_folder / folder / f"{index}.npy" for role, folder in folders.items()}
        image = _image(files["image"])
        if required_size is not None and tuple(image.shape[1:]) != tuple(required_size):
            raise UserError(f"data set '{dataset}': {files['image']} is {image.shape[1]}x{image.shape[2]}, "
                            f"not the native {required_size[0]}x{required_size[1]}; set data.options.resize "
                            "to [height, width] to resize every sample")
        inputs[row] = resize_image(image, size)
        for task, kind in task_kinds.items():
            value = _READERS[kind](files[task], classes)
            if value.shape[-2:] != image.shape[-2:]:
                raise UserError(f"data set '{dataset}': {files[task]} is {value.shape[-2]}x{value.shape[-1]} "
                                f"but {files['image']} is {image.shape[1]}x{image.shape[2]}; a sample's files "
                                "must have the same height and width")
            targets[task][row] = _RESIZERS[kind](value, size)
    return Split(torch.from_numpy(inputs), {task: torch.from_numpy(target) for task, target in targets.items()},
                 torch.from_numpy(indices + id_offset).unsqueeze(1))


# -- reading one file -----------------------------------------------------------------------------
def _load_array(file: Path) -> np.ndarray:
    try:
        return np.load(file, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {file} as a NumPy array: {error}") from None


def _channels_first(array: np.ndarray, channels: int, file: Path, what: str) -> np.ndarray:
    """[C, H, W] from [C, H, W] or [H, W, C] (or [H, W] when `channels` is 1)."""
    if channels == 1 and array.ndim == 2:
        return array[None]
    if array.ndim == 3 and array.shape[0] == channels:
        return array
    if array.ndim == 3 and array.shape[-1] == channels:
        return np.moveaxis(array, -1, 0)
    layouts = "[H, W], [1, H, W] or [H, W, 1]" if channels == 1 else f"[H, W, {channels}] or [{channels}, H, W]"
    raise UserError(f"{file}: {what} has shape {list(array.shape)}, expected {layouts}")


def _image(file: Path) -> np.ndarray:
    array = _load_array(file)
    scaled = array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)
    return _channels_first(scaled, 3, file, "an image")


def _label(file: Path, classes: int) -> np.ndarray:
    array = _channels_first(_load_array(file), 1, file, "a label map")[0]
    if not np.isfinite(array).all():
        raise UserError(f"{file}: a label map must hold class indices, found NaN or infinity")
    labels = np.rint(array).astype(np.int64)
    labels[labels < 0] = VOID_LABEL
    bad = (labels >= classes) & (labels != VOID_LABEL)
    if bad.any():
        raise UserError(f"{file}: labels must be 0..{classes - 1}, or -1 or {VOID_LABEL} for void; "
                        f"found {int(labels[bad].max())}")
    return labels


def _finite(file: Path, channels: int, what: str) -> np.ndarray:
    array = _channels_first(_load_array(file), channels, file, what).astype(np.float32)
    return np.where(np.isfinite(array), array, np.float32(0.0))  # non-finite pixels are invalid


_READERS = {"segmentation": _label,
            "depth": lambda file, classes: _finite(file, 1, "a depth map"),
            "normals": lambda file, classes: _finite(file, 3, "a normal map")}


# -- resizing (arithmetic in numpy, which is much faster than torch per op on small CPU arrays) ------
def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[C, H, W] float32 bilinearly (antialiased when shrinking) to `size`."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    resized = functional.interpolate(torch.from_numpy(np.ascontiguousarray(image))[None], size=size,
                                     mode="bilinear", align_corners=False, antialias=True)
    return resized[0].numpy()


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[H, W] class indices by nearest neighbour (pixel centres, as torch's `nearest-exact`)."""
    if tuple(labels.shape) == tuple(size):
        return labels
    rows = ((np.arange(size[0]) + 0.5) * labels.shape[0] / size[0]).astype(np.int64)
    columns = ((np.arange(size[1]) + 0.5) * labels.shape[1] / size[1]).astype(np.int64)
    return labels[np.ix_(rows, columns)]


def _masked_resize(values: np.ndarray, valid: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear resize of `values` [C, H, W] averaging valid pixels only; also where the result is valid.

    The values times the mask and the mask go through one resize; their ratio is the mean of the
    valid pixels under the filter, and a pixel is valid where at least half the weight was valid.
    """
    weighted = np.concatenate([values * valid, valid[None].astype(np.float32)])
    resized = resize_image(weighted, size)
    total, weight = resized[:-1], resized[-1:]
    resized_valid = weight[0] >= 0.5
    return np.where(resized_valid, total / np.maximum(weight, 1e-6), np.float32(0.0)), resized_valid


def resize_depth(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[1, H, W] depth with 0 = invalid: invalid pixels are left out of the average, and stay 0."""
    if tuple(depth.shape[-2:]) == tuple(size):
        return depth
    resized, _ = _masked_resize(depth, depth[0] > 0, size)
    return resized


def resize_normals(normals: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[3, H, W] normals, zero vector = invalid: masked average, then renormalised to unit length."""
    if tuple(normals.shape[-2:]) == tuple(size):
        return normals
    resized, valid = _masked_resize(normals, _length(normals) > 1e-6, size)
    length = _length(resized)
    valid &= length > 1e-6
    return np.where(valid, resized / np.maximum(length, 1e-6), np.float32(0.0))


def _length(vectors: np.ndarray) -> np.ndarray:
    """The length of each pixel's vector, [H, W]."""
    return np.sqrt((vectors * vectors).sum(axis=0))


_RESIZERS = {"segmentation": resize_labels, "depth": resize_depth, "normals": resize_normals}
