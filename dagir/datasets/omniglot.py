"""Omniglot as many homogeneous tasks: one character-classification task per alphabet.

The layout is the one the Omniglot release unpacks to:

    root/images_background/<Alphabet>/<character>/<drawing>.png     30 alphabets, 964 characters
    root/images_evaluation/<Alphabet>/<character>/<drawing>.png     20 alphabets, 659 characters

Each alphabet is a task named after its folder, sanitised to a spec task name (lowercase, runs of
other characters become `_`: `Japanese_(hiragana)` gives `japanese_hiragana`); its classes are its
characters in sorted folder order. A sample is one drawing and belongs to exactly one alphabet: its
target for that alphabet's task is the character index, and for every other task `IGNORED_CLASS`
(-100, the `ignore_index` of `torch.nn.functional.cross_entropy`), so a loss skips it.

Options:
- `sets`: which of `background` and `evaluation` to read; null (default) reads every one present.
- `alphabets`: null for all, a count N for the first N (in set order, then by name), or a list of
  alphabet folder names or task names.
- `size`: drawings are resized to size x size (default 28), greyscale in [0, 1] with strokes 1 and
  background 0 (the release draws black on white).
- `test_fraction`: the fraction of each character's drawings held out for test.

Splits are drawn per character, so every character is in every split: of a character's drawings,
`test_fraction` go to test and `val_split` to validation (at least one each when it has three or more),
the rest to training. The draw depends only on `seed` and the character's folder, so adding or
leaving out alphabets does not move another character's drawings between splits.
`Split.source_ids` [N, 1] indexes the drawings in the order `scan_alphabets` lists them.
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import UserError
from ..tasks import IGNORED_CLASS
from .splits import Split, TaskData, seeded_rng

SETS = {"background": "images_background", "evaluation": "images_evaluation"}
LAYOUT = "root/images_background/<Alphabet>/<character>/<drawing>.png (and optionally images_evaluation)"


@dataclass(frozen=True)
class Alphabet:
    """One alphabet folder: its task name and its characters' drawings, in class order."""

    task: str
    folder: Path
    characters: tuple[tuple[str, tuple[Path, ...]], ...]


def task_name(alphabet: str) -> str:
    """A spec task name for an alphabet folder name.

    >>> task_name("Japanese_(hiragana)"), task_name("Anglo-Saxon_Futhorc"), task_name("N_Ko")
    ('japanese_hiragana', 'anglo_saxon_futhorc', 'n_ko')
    """
    name = re.sub(r"[^a-z0-9]+", "_", alphabet.lower()).strip("_")
    return name if re.match(r"[a-z]", name) else f"alphabet_{name}"


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _subfolders(folder: Path) -> list[Path]:
    return sorted((entry for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith(".")),
                  key=lambda entry: _natural_key(entry.name))


def scan_alphabets(root: str | None, sets: list[str] | None = None,
                   alphabets: int | list[str] | None = None) -> list[Alphabet]:
    """The alphabets under `root` (listing folders only, no image is read), chosen by `sets` and `alphabets`."""
    if root is None:
        raise UserError(f"data set 'omniglot' is read from disk: set data.root to a folder laid out as {LAYOUT}")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise UserError(f"data.root: folder {str(base)!r} for data set 'omniglot' does not exist "
                        f"(expected {LAYOUT})")
    if sets is None:
        chosen_sets = [name for name, folder in SETS.items() if (base / folder).is_dir()]
        if not chosen_sets:
            raise UserError(f"data set 'omniglot': {base} has neither {base / SETS['background']} nor "
                            f"{base / SETS['evaluation']} (expected {LAYOUT})")
    else:
        chosen_sets = list(sets)
        for name in chosen_sets:
            if not (base / SETS[name]).is_dir():
                raise UserError(f"data set 'omniglot': missing folder {base / SETS[name]} "
                                f"(data.options.sets names '{name}'; expected {LAYOUT})")
    folders = [folder for name in chosen_sets for folder in _subfolders(base / SETS[name])]
    if not folders:
        raise UserError(f"data set 'omniglot': no alphabet folders under "
                        f"{', '.join(str(base / SETS[name]) for name in chosen_sets)} (expected {LAYOUT})")
    by_task: dict[str, Path] = {}
    for folder in folders:
        task = task_name(folder.name)
        if task in by_task:
            raise UserError(f"data set 'omniglot': alphabet folders {by_task[task]} and {folder} both give "
                            f"the task name '{task}'")
        by_task[task] = folder
    if isinstance(alphabets, int):
        folders = folders[:alphabets]
    elif alphabets is not None:
        by_name = {**{folder.name: folder for folder in folders}, **by_task}
        unknown = [name for name in alphabets if name not in by_name]
        if unknown:
            raise UserError(f"data.options.alphabets (data set 'omniglot'): no alphabet "
                            f"{', '.join(map(repr, unknown))} (found: {', '.join(f.name for f in folders)})")
        wanted = {by_name[name] for name in alphabets}
        folders = [folder for folder in folders if folder in wanted]
    return [_scan_alphabet(folder) for folder in folders]


def _scan_alphabet(folder: Path) -> Alphabet:
    characters = []
    for character in _subfolders(folder):
        drawings = sorted((file for file in character.iterdir() if file.suffix.lower() == ".png"),
                          key=lambda file: _natural_key(file.name))
        if not drawings:
            raise UserError(f"data set 'omniglot': character folder {character} holds no .png drawings "
                            f"(expected {LAYOUT})")
        characters.append((character.name, tuple(drawings)))
    if not characters:
        raise UserError(f"data set 'omniglot': alphabet folder {folder} holds no character folders "
                        f"(expected {LAYOUT})")
    return Alphabet(task_name(folder.name), folder, tuple(characters))


def tasks_for(options: Mapping[str, Any], root: str | None) -> tuple[dict[str, str], dict[str, int]]:
    """The tasks `root` offers with these options: one classification task per alphabet, and its classes."""
    found = scan_alphabets(root, options["sets"], options["alphabets"])
    return ({alphabet.task: "classification" for alphabet in found},
            {alphabet.task: len(alphabet.characters) for alphabet in found})


def load(options: Mapping[str, Any], root: str | None = None, val_split: float = 0.1,
         seed: int = 0) -> TaskData:
    """Omniglot from `root`, one classification task per alphabet; other alphabets' targets are -100.

    >>> data = load({"alphabets": 5}, root="data/omniglot")  # doctest: +SKIP
    >>> sorted(data.task_kinds)[:2], data.train.inputs.shape[1:]  # doctest: +SKIP
    (['alphabet_of_the_magi', 'anglo_saxon_futhorc'], torch.Size([1, 28, 28]))
    """
    test_fraction, size = options["test_fraction"], options["size"]
    found = scan_alphabets(root, options["sets"], options["alphabets"])
    rows: dict[str, list[tuple[int, int, int]]] = {"train": [], "val": [], "test": []}
    files: list[Path] = []
    for alphabet_index, alphabet in enumerate(found):
        for label, (character, drawings) in enumerate(alphabet.characters):
            parts = _split_drawings(len(drawings), test_fraction, val_split, seed,
                                    f"{alphabet.folder.name}/{character}")
            for name, positions in parts.items():
                rows[name] += [(len(files) + position, alphabet_index, label) for position in positions]
            files += drawings
    pixels = np.stack([read_drawing(file, size) for file in files])
    splits = {}
    for name, chosen in rows.items():
        chosen.sort()
        ids = np.array([row[0] for row in chosen], dtype=np.int64)
        owners = np.array([row[1] for row in chosen], dtype=np.int64)
        labels = np.array([row[2] for row in chosen], dtype=np.int64)
        targets = {alphabet.task: torch.from_numpy(np.where(owners == index, labels, IGNORED_CLASS))
                   for index, alphabet in enumerate(found)}
        splits[name] = Split(torch.from_numpy(pixels[ids]).unsqueeze(1), targets, torch.from_numpy(ids)[:, None])
    return TaskData("omniglot", splits["train"], splits["val"], splits["test"], input_shape=(1, size, size),
                    task_kinds={alphabet.task: "classification" for alphabet in found},
                    task_classes={alphabet.task: len(alphabet.characters) for alphabet in found})


def _split_drawings(count: int, test_fraction: float, val_split: float, seed: int,
                    key: str) -> dict[str, list[int]]:
    """One character's drawings split at random, from `seed` and the character's folder `key`."""
    order = seeded_rng(seed, stream=zlib.crc32(key.encode())).permutation(count).tolist()
    floor = 1 if count >= 3 else 0  # a character with three drawings or more is in every split
    test = max(floor, int(round(test_fraction * count)))
    val = max(floor, int(round(val_split * count)))
    while test + val >= count and test + val > 0:  # keep a drawing for training
        if test >= val:
            test -= 1
        else:
            val -= 1
    return {"test": sorted(order[:test]), "val": sorted(order[test:test + val]),
            "train": sorted(order[test + val:])}


def read_drawing(file: Path, size: int) -> np.ndarray:
    """One drawing as float32 [size, size] in [0, 1], strokes 1 on a background of 0."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as image:
            grey = image.convert("L")
            if grey.size != (size, size):
                grey = grey.resize((size, size), Image.Resampling.BILINEAR)  # antialiased when shrinking
            return 1.0 - np.asarray(grey, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as error:
        raise UserError(f"data set 'omniglot': cannot read {file} as an image: {error}") from None
