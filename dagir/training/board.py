"""TensorBoard event files for a run (`OUT/tensorboard/`), what people in this field open first.

Per epoch: every figure of the history row (train loss and squeeze, each task's validation
metrics, loss weights), the learning rate of every optimiser, the temperature τ, and, where the
model has gates, a histogram of each task's gates. Once: the IR after every pass as an image (the
graphviz drawings), the gate heatmaps, the curves, the compact network's architecture as text and
the test metrics. Needs the `tensorboard` package (`pip install 'dagir[tensorboard]'`); without it
`dagir run` says so once and writes everything else.

    tensorboard --logdir OUT/tensorboard
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch


def tensorboard_available() -> bool:
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


def epoch_scalars(row: dict[str, Any], optimizers: Sequence[torch.optim.Optimizer],
                  model: torch.nn.Module) -> dict[str, float]:
    """What every board logs per epoch: the history row's numbers, each optimiser group's learning
    rate, and, where the model has gates, the temperature τ."""
    stage = row.get("stage", "")
    scalars = {key: float(value) for key, value in row.items()
               if isinstance(value, (int, float)) and key not in ("epoch", "epoch_global")}
    for index, optimizer in enumerate(optimizers):
        for group_index, group in enumerate(optimizer.param_groups):
            scalars[f"lr/{stage}/optimizer{index}_group{group_index}"] = float(group["lr"])
    gates = getattr(model, "gates", None)
    if gates is not None and getattr(gates, "slots", None):
        scalars["search/tau"] = float(gates.tau)
    return scalars


class RunBoard:
    """One run's TensorBoard writer; every method is cheap and never fails the run."""

    def __init__(self, folder: Path, *, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter
        # a resumed run starts again after its last epoch: events past it (from the killed run) are purged
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=purge_step)

    def epoch(self, row: dict[str, Any], step: int, optimizers: Sequence[torch.optim.Optimizer],
              model: torch.nn.Module) -> None:
        for key, value in epoch_scalars(row, optimizers, model).items():
            self.writer.add_scalar(key, value, step)
        gates = getattr(model, "gates", None)
        if gates is not None and getattr(gates, "slots", None):
            if gates.mode == "soft":
                training = gates.training
                gates.eval()
                with torch.no_grad():
                    values = gates().detach().float().cpu()
                gates.train(training)
                for task in sorted(set(gates.slot_tasks)):
                    mask = torch.tensor([owner == task for owner in gates.slot_tasks])
                    self.writer.add_histogram(f"gates/{task}", values[mask], step)

    def image(self, tag: str, path: Path, step: int = 0) -> None:
        """A PNG file as an image (skipped when the file is missing)."""
        if not Path(path).is_file():
            return
        import numpy as np
        from matplotlib import image as mpimg
        pixels = mpimg.imread(str(path))
        if pixels.dtype != np.uint8:
            pixels = (pixels * 255).clip(0, 255).astype(np.uint8)
        self.writer.add_image(tag, pixels[..., :3], step, dataformats="HWC")

    def text(self, tag: str, text: str, step: int = 0) -> None:
        self.writer.add_text(tag, "    " + text.replace("\n", "\n    "), step)  # indented: shown as code

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)

    def artifact(self, path: Path) -> None:
        """A file of the run (TensorBoard has no place for one: the run folder holds it)."""

    def close(self, failed: bool = False) -> None:
        self.writer.flush()
        self.writer.close()


class Boards:
    """Every board a run writes to (TensorBoard, MLflow), called as one; each call goes to all."""

    def __init__(self, boards: Sequence[Any]) -> None:
        self.boards = list(boards)

    def __bool__(self) -> bool:
        return bool(self.boards)

    def __getattr__(self, method: str):
        def every(*args, **kwargs) -> None:
            for board in self.boards:
                getattr(board, method)(*args, **kwargs)
        return every
