"""The training loop shared by the three stages: epochs of minibatch steps, resumable at any step.

A stage is a number of epochs; each epoch visits the training split in an order fixed by
(seed, stage, epoch), so a run resumed from a checkpoint taken after step k of an epoch replays the
same batches from step k + 1 on and reaches the same result as a run that never stopped.
"""
from __future__ import annotations

import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..datasets.splits import Batch, EpochBatches, Split, TaskData
from ..errors import UserError
from ..spec import StageSpec, TaskSpec
from .descent import Descent, stepped_by
from .distributed import World
from .precision import Precision
from ..tasks import MetricMeter, task_loss

FUSED_DEVICES = ("cpu", "cuda")  # where torch's fused SGD, Adam and AdamW kernels run


class DivergedError(UserError):
    """The loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C inside a stage: the loop stopped between two steps and wrote its checkpoint there first."""


@contextmanager
def interrupts_between_steps(enabled: bool = True) -> Iterator[Callable[[], bool]]:
    """Inside the block Ctrl-C (SIGINT) only raises a flag, read by the function yielded, so a loop can
    stop between two steps with a checkpoint rather than anywhere inside one; a second Ctrl-C
    interrupts at once. Off (the flag never rises) where a handler cannot be set (not the main
    thread), where SIGINT is ignored, and when `enabled` is false (a run on several processes,
    whose ranks must stop at the same step)."""
    previous = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if not enabled or previous in (None, signal.SIG_IGN):
        yield lambda: False
        return
    pressed = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal pressed
        pressed = True
        signal.signal(signal.SIGINT, previous)
    signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: pressed
    finally:
        signal.signal(signal.SIGINT, previous)


def make_optimizer(parameters: Sequence[nn.Parameter], stage: StageSpec) -> torch.optim.Optimizer:
    """The stage's optimiser over the `parameters` that train. torch's fused kernel where every one
    is a float tensor on a device that has it (CPU and CUDA): one call for all of them, not a few
    per tensor. On the tabular generator's supernet (72 tensors) an Adam step takes 0.22x the time,
    and a warm-up step 0.72-0.77x; on MultiMNIST's, whose convolutions dominate, 0.98x
    (`benchmarks/optimizer_step.py`, `benchmarks/results/optimizer-step.txt`)."""
    parameters = [p for p in parameters if p.requires_grad]
    options = {"lr": stage.lr, "weight_decay": stage.weight_decay}
    if parameters and all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in parameters):
        options["fused"] = True
    if stage.optimizer == "sgd":
        return torch.optim.SGD(parameters, momentum=0.9, **options)
    if stage.optimizer == "adamw":
        return torch.optim.AdamW(parameters, **options)
    return torch.optim.Adam(parameters, **options)


def multitask_loss(outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor],
                   tasks: Sequence[TaskSpec], weighting: Callable[[Tensor], Tensor] | None = None,
                   ) -> tuple[Tensor, list[Tensor]]:
    """Σ_t w_t · L_t (or the `weighting` of the stacked w_t · L_t), and the terms w_t · L_t (in its
    graph: Jacobian descent differentiates each, `dagir.training.descent`)."""
    weighted = [task.weight * task_loss(task.kind, outputs[task.name], targets[task.name], task.loss)
                for task in tasks]
    if weighting is not None:
        return weighting(torch.stack(weighted)), weighted
    total = weighted[0]
    for term in weighted[1:]:
        total = total + term
    return total, weighted


def epoch_order_seed(seed: int, stage: str, epoch: int) -> int:
    return (seed * 1_000_003 + sum(map(ord, stage)) * 10_007 + epoch) % (2 ** 62)


def epoch_batches(split: Split, batch_size: int, seed: int, world: World = World()) -> EpochBatches:
    """The shuffled batches of one training epoch, in an order fixed by `seed`, read lazily (this
    rank's share of each, in a run on several processes)."""
    generator = torch.Generator().manual_seed(seed)
    return EpochBatches(split, batch_size, shuffle=True, generator=generator, drop_last=len(split) > batch_size,
                        shard=world.batch_shard)


@dataclass
class Position:
    """Where a stage is: epochs finished and steps done in the current epoch."""

    epoch: int = 0
    step: int = 0


@dataclass
class EpochTotals:
    loss: float = 0.0
    squeeze: float = 0.0
    steps: int = 0

    def as_dict(self) -> dict[str, float]:
        return {"loss": self.loss, "squeeze": self.squeeze, "steps": self.steps}


StepFunction = Callable[[Batch, int, int], tuple[float, float]]
"""(batch, epoch, step) -> (loss, squeeze loss) after one optimisation step."""


def supervised_step(forward: Callable[[Tensor], Mapping[str, Tensor]], optimizer: torch.optim.Optimizer,
                    tasks: Sequence[TaskSpec], weighting: Callable[[Tensor], Tensor] | None = None,
                    precision: Precision | None = None, descent: Descent | None = None) -> StepFunction:
    """One plain optimisation step on the weighted task losses (warm-up, fine-tune, baselines), their
    gradients combined by `descent` (default: back-propagate the combined loss)."""
    precision = precision or Precision()
    descent = descent or Descent("none", precision)
    parameters = stepped_by(optimizer)

    def step(batch: Batch, epoch: int, index: int) -> tuple[float, float]:
        inputs, targets = batch
        loss, terms = multitask_loss(forward(inputs), targets, tasks, weighting)
        optimizer.zero_grad(set_to_none=True)
        descent.backward(loss, terms, parameters)
        precision.step(optimizer)
        return float(loss.detach()), 0.0
    return step


@dataclass
class StageLoop:
    """Runs `epochs` epochs of `step` over the training split, checkpointing as it goes.

    `checkpoint(position, totals)` is called every `checkpoint_every` steps and after every epoch, but
    not again within `checkpoint_seconds` of the last call (or of the stage's start); after the
    stage's last epoch always. On a small data set an epoch takes milliseconds and writing the
    checkpoint as long (a quarter of a penguins run's stage time), so a run checkpoints about once
    a `checkpoint_seconds`; 0 writes every one. Ctrl-C stops the loop after the step (or the
    epoch's end) it came in, with a checkpoint there whatever the clock, and raises `Interrupted`.
    `end_of_epoch(epoch, totals)` after every epoch (evaluation, history); `before_step(progress)`,
    if given, before every step with the stage's progress in [0, 1) (learning-rate schedules).
    """

    name: str
    split: Split
    batch_size: int
    epochs: int
    steps_per_epoch: int | None
    seed: int
    step: StepFunction
    checkpoint: Callable[[Position, EpochTotals], None]
    end_of_epoch: Callable[[int, EpochTotals], None]
    checkpoint_every: int = 200
    checkpoint_seconds: float = 0.0
    progress: bool = True
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    before_step: Callable[[float], None] | None = None
    world: World = field(default_factory=World)

    def steps_in_epoch(self) -> int:
        full = len(self.split) // self.batch_size if len(self.split) > self.batch_size else 1
        return min(full, self.steps_per_epoch) if self.steps_per_epoch else full

    def total_steps(self) -> int:
        return self.epochs * self.steps_in_epoch()

    def run(self, start: Position | None = None, totals: EpochTotals | None = None) -> None:
        with interrupts_between_steps(enabled=not self.world.distributed) as interrupted:
            self._run(start or Position(), totals, interrupted)

    def _run(self, position: Position, totals: EpochTotals | None, interrupted: Callable[[], bool]) -> None:
        last_saved = time.monotonic()

        def save(at: Position, totals: EpochTotals, *, always: bool = False) -> None:
            nonlocal last_saved
            stop = interrupted()  # read once: Ctrl-C may come in while the checkpoint is written
            if always or stop or time.monotonic() - last_saved >= self.checkpoint_seconds:
                self.checkpoint(at, totals)
                last_saved = time.monotonic()
            if stop:
                where = f"in epoch {at.epoch + 1} after step {at.step}" if at.step else f"after epoch {at.epoch}"
                raise Interrupted(f"{self.name} stopped {where}, with a checkpoint there")
        for epoch in range(position.epoch, self.epochs):
            batches = epoch_batches(self.split, self.batch_size, epoch_order_seed(self.seed, self.name, epoch),
                                    self.world)
            count = min(len(batches), self.steps_in_epoch())
            running = totals if (totals is not None and epoch == position.epoch) else EpochTotals()
            first = position.step if epoch == position.epoch else 0
            bar = tqdm(total=count, initial=first, desc=f"{self.name} {epoch + 1}/{self.epochs}",
                       disable=None if self.progress else True,  # None: off where stderr is not a terminal
                       leave=False, unit="step", dynamic_ncols=True)
            for step in range(first, count):
                inputs, targets = batches[step]
                batch = (inputs.to(self.device), {k: v.to(self.device) for k, v in targets.items()})
                if self.before_step is not None:
                    self.before_step((epoch * self.steps_in_epoch() + step) / max(self.total_steps(), 1))
                loss, squeeze = self.step(batch, epoch, step)
                if not math.isfinite(loss):
                    bar.close()
                    raise DivergedError(f"training diverged in {self.name} epoch {epoch + 1} step {step + 1}: "
                                        f"the loss is {loss}")
                running.loss += loss
                running.squeeze += squeeze
                running.steps += 1
                bar.set_postfix(loss=f"{running.loss / running.steps:.4f}", refresh=False)  # drawn by update
                bar.update(1)
                if interrupted():
                    bar.close()
                    save(Position(epoch, step + 1), running)  # writes the checkpoint and raises Interrupted
                if (step + 1) % self.checkpoint_every == 0 and step + 1 < count:
                    save(Position(epoch, step + 1), running)
            bar.close()
            running.loss, running.squeeze = self.world.mean(running.loss), self.world.mean(running.squeeze)
            self.end_of_epoch(epoch, running)
            save(Position(epoch + 1, 0), EpochTotals(), always=epoch + 1 == self.epochs)
            totals = None


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, tasks: Sequence[TaskSpec], data: TaskData,
             batch_size: int = 512, device: torch.device | None = None,
             dtype: torch.dtype = torch.float32, precision: Precision | None = None,
             world: World = World()) -> dict[str, dict[str, float]]:
    """Every task's metrics on `split`, in eval mode (under the run's autocast, as it trains); in a
    run on several processes each rank takes its share of every batch, and the sums are reduced."""
    was_training = model.training
    model.eval()
    meters = {t.name: MetricMeter(t.kind, scale=data.scale(t.name)) for t in tasks}
    device = device or torch.device("cpu")
    precision = precision or Precision()
    try:
        for inputs, targets in EpochBatches(split, batch_size, shard=world.batch_shard):
            with precision.autocast():
                outputs = model(precision.inputs(inputs.to(device=device, dtype=dtype)))
            for task in tasks:
                meters[task.name].update(outputs[task.name].float().cpu(), targets[task.name])
    finally:
        model.train(was_training)
    for meter in meters.values() if world.distributed else ():
        meter.reduce(world.sum_)
    return {name: meter.compute() for name, meter in meters.items()}


def flatten_metrics(metrics: Mapping[str, Mapping[str, float]], prefix: str) -> dict[str, float]:
    return {f"{prefix}/{task}/{name}": value for task, values in metrics.items() for name, value in values.items()}


def unflatten_metrics(row: Mapping[str, Any], prefix: str) -> dict[str, dict[str, float]]:
    """The metrics `flatten_metrics(metrics, prefix)` put in `row`, per task again."""
    metrics: dict[str, dict[str, float]] = {}
    for key, value in row.items():
        split, _, rest = key.partition("/")
        if split == prefix:
            task, _, name = rest.partition("/")
            metrics.setdefault(task, {})[name] = value
    return metrics
