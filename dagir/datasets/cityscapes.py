"""Cityscapes in the preprocessed NumPy layout of MTAN, LibMTL and Auto-Lambda: segmentation and depth.

    root/train/{image,label_7,label_19,depth}/<i>.npy     2975 samples in the usual release
    root/val/{image,label_7,label_19,depth}/<i>.npy       500 samples: dagir's *test* split

Only the label folder of the chosen `classes` (7 or 19) is needed. Images are [H, W, 3] or [3, H, W]
in [0, 1]; labels [H, W] with -1 (or 255) void; depth [H, W], [1, H, W] or [H, W, 1] with 0 invalid.
The native size is 128x256; `resize` ([H, W], default [64, 128]; null keeps the native size) and
`limit` (at most that many samples per split) work as for NYUv2, and so do the splits: the release's
`val` folder is the test split, validation is carved from `train` by `seed`. See `dagir.datasets.nyuv2`
for the resizing rules and the target shapes.
"""
from __future__ import annotations

from typing import Any, Mapping

from .nyuv2 import load_dense_layout
from .splits import TaskData

NATIVE_SIZE = (128, 256)
TASK_KINDS = {"segmentation": "segmentation", "depth": "depth"}

def load(options: Mapping[str, Any], root: str | None = None, val_split: float = 0.1,
         seed: int = 0) -> TaskData:
    """Cityscapes from `root` in the MTAN layout, with tasks segmentation (7 or 19 classes) and depth.

    >>> data = load({"classes": 19, "limit": 16}, root="data/cityscapes")  # doctest: +SKIP
    >>> data.train.inputs.shape, data.task_classes["segmentation"]  # doctest: +SKIP
    (torch.Size([16, 3, 64, 128]), 19)
    """
    classes = options["classes"]
    folders = {"image": "image", "segmentation": f"label_{classes}", "depth": "depth"}
    return load_dense_layout("cityscapes", root, folders, TASK_KINDS, classes, NATIVE_SIZE,
                             options["resize"], options["limit"], val_split, seed)


def tasks_for(options: Mapping[str, Any], root: str | None) -> tuple[dict[str, str], dict[str, int]]:
    """The tasks and class counts these options give: segmentation has `classes` classes."""
    return dict(TASK_KINDS), {"segmentation": options["classes"]}
