"""`images`: a user's own folder of images with a CSV of labels, no code.

    data: {dataset: images, root: photos/, options: {size: [64, 64], channels: 3}}

`root/labels.csv` (`options.labels`) has a column `file` (`options.file_column`) naming each image
(relative to `root`) and a column per task, read as `table` reads its task columns (text or
0..K-1 integers classify, numbers with a fraction regress). Images are read with Pillow, converted
to `channels` (1: grey, 3: RGB), resized to `size` ([height, width]; null: the first image's size,
which every image must then have) and scaled to [0, 1]. The splits are drawn with the run's seed.
The CSV, its task columns and the first image's header are read when the spec is loaded; a missing
or unreadable image is a `UserError` naming the CSV line and the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import UserError
from .splits import TaskData, seeded_splits
from .table import Table, column_kind, read_table, split_task_data, task_targets


def _table(options: Mapping[str, Any], root: str | None) -> tuple[Path, Table]:
    if root is None:
        raise UserError("data set 'images' is read from disk: set data.root to the folder of images")
    base = Path(root).expanduser()
    table = read_table(str(base / options["labels"]))
    if options["file_column"] not in table.columns:
        raise UserError(f"{table.path}: no column {options['file_column']!r} naming the image files "
                        f"(columns: {', '.join(table.header)}; name another with data.options.file_column)")
    return base, table


def _open(base: Path, table: Table, row: int, options: Mapping[str, Any]):
    from PIL import Image, UnidentifiedImageError
    name = table.columns[options["file_column"]][row]
    path = base / name
    if not path.is_file():
        raise UserError(f"{table.where(row)}: image {name!r} does not exist under {base}")
    try:
        image = Image.open(path)
        image.load()
    except (OSError, UnidentifiedImageError) as error:
        raise UserError(f"{path}: cannot read it as an image ({error})") from None
    return image.convert("L" if options["channels"] == 1 else "RGB")


def tasks_for(options: Mapping[str, Any], root: str | None,
              tasks: tuple[str, ...] = ()) -> tuple[dict[str, str], dict[str, int]]:
    _, table = _table(options, root)
    kinds, classes = {}, {}
    for column in tasks:
        if column in table.columns and column != options["file_column"]:
            kinds[column], _, count = column_kind(table, column, options)
            if count is not None:
                classes[column] = count
    return kinds, classes


def shape_for(options: Mapping[str, Any], root: str | None, tasks: tuple[str, ...] = ()) -> tuple[int, ...]:
    if options["size"] is not None:
        return (options["channels"], *options["size"])
    base, table = _table(options, root)
    width, height = _open(base, table, 0, options).size
    return (options["channels"], height, width)


def load(options: Mapping[str, Any], root: str | None, val_split: float = 0.1, seed: int = 0,
         tasks: tuple[str, ...] = ()) -> TaskData:
    base, table = _table(options, root)
    channels, height, width = shape_for(options, root, tasks)
    count = len(table.columns[options["file_column"]])
    pixels = np.empty((count, channels, height, width), dtype=np.float32)
    for row in range(count):
        image = _open(base, table, row, options)
        if image.size != (width, height):
            if options["size"] is None:
                raise UserError(f"{table.where(row)}: image is {image.size[1]}x{image.size[0]}, the first "
                                f"{height}x{width}; set data.options.size to resize them all")
            image = image.resize((width, height))
        values = np.asarray(image, dtype=np.float32) / 255.0
        pixels[row] = values[None] if channels == 1 else values.transpose(2, 0, 1)
    test = options["test_fraction"]
    parts = seeded_splits(count, test, val_split, seed)
    targets = task_targets(table, tasks, options, parts["train"])
    return split_task_data("images", torch.from_numpy(pixels), targets, parts)
