"""The three stages of a run (DESIGN §4), each a small function over one `StageRunner`:

    warmup    train Θ and the heads, every gate 1 (the supernet computes each shared state once)
    search    train the decisions with the stage's strategy (`dagir.training.search`)
    finetune  train the compact network: Θ of the kept edges, the heads, batch norm per state

The runner owns what every stage shares: the device and precision, the epoch loop with its
checkpoints and resume (`StageLoop`), the validation after every epoch and the history.
"""
from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import nn

from ..datasets.splits import Split, TaskData
from ..spec import STAGES, Spec, StageSpec, TaskSpec
from ..tasks import delta_mtl
from .checkpoint import save_checkpoint
from .loop import (DivergedError, EpochTotals, Interrupted, Position, StageLoop, StepFunction, epoch_batches,
                   epoch_order_seed, evaluate, flatten_metrics, make_optimizer, supervised_step)
from .distributed import World
from .norms import recalibrated_norms
from .precision import Precision
from .schedules import set_learning_rates, squeeze_ramp, temperature
from .descent import Descent
from .weighting import make_weighting

if TYPE_CHECKING:
    from .budget import SearchBudget

Echo = Callable[[str], None]
WEIGHT_PREFIXES = ("edge_", "node_", "op_")  # Θ's submodules; the heads are `head_*`


class BestEpoch:
    """Model selection on validation (`train.select: best` for the final stage, `train.search.select:
    best` for the search): the epoch of a stage whose validation metrics gain most over the stage's
    first epoch (Δ_MTL's formula, each task by its chosen metric), and a copy of the model then;
    the stage ends with that model restored."""

    def __init__(self, tasks: Sequence[TaskSpec]) -> None:
        self.kinds = {task.name: task.kind for task in tasks}
        self.chosen = {task.name: task.metric for task in tasks}
        self.reference: dict[str, dict[str, float]] | None = None
        self.score, self.epoch, self.model = -math.inf, -1, None

    def offer(self, epoch: int, metrics: dict[str, dict[str, float]], model: nn.Module) -> None:
        if self.reference is None:  # a metric of 0 would make the relative change undefined
            self.reference = {task: {k: (v if v != 0 else 1e-12) for k, v in values.items()}
                              for task, values in metrics.items()}
        score = delta_mtl(metrics, self.reference, self.kinds, self.chosen)
        if score > self.score:
            self.score, self.epoch = score, epoch
            self.model = {key: value.detach().clone() for key, value in model.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "score": self.score, "epoch": self.epoch, "model": self.model}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reference, self.score, self.epoch, self.model = (state["reference"], state["score"], state["epoch"],
                                                              state["model"])


class StageRunner:
    """Runs a stage's loop in a run folder: device, precision, checkpoints, resume, history."""

    def __init__(self, spec: Spec, device: torch.device, checkpoint_path, *, progress: bool, echo: Echo,
                 world: World = World()) -> None:
        self.spec, self.device, self.checkpoint_path, self.progress, self.echo = (
            spec, device, checkpoint_path, progress, echo)
        self.world = world  # this process's rank among the run's processes (0 of 1 but under torchrun)
        self.precision = Precision(spec.train.precision, device, world, spec.train.channels_last)  # autocast etc.
        self.dtype = self.precision.dtype
        self.history: list[dict[str, Any]] = []  # a resumed run's is put back by `Run`
        self.stage_seconds: dict[str, float] = {}  # wall time
        self.stage_cpu_seconds: dict[str, float] = {}  # this process's CPU time: what sharing the machine does not inflate
        self.stage_steps: dict[str, int] = {}  # the optimiser steps each stage takes in all (its budget)
        self.weighting = make_weighting(spec.train.loss_weighting, len(spec.tasks), device, world)  # None: the sum
        self.descent = Descent(spec.train.loss_weighting.aggregator, self.precision)  # the task gradients' combination
        self.selected: dict[str, int] = {}  # the epoch (1-based) a `select: best` kept, per stage
        self.board = None  # the run's `Boards` (TensorBoard, MLflow) when it logs to any

    def forward(self, model: nn.Module, inputs: torch.Tensor):
        with self.precision.autocast():
            return model(self.precision.inputs(inputs))

    def evaluate(self, model: nn.Module, split: Split, data: TaskData,
                 served: nn.Module | None = None) -> dict[str, dict[str, float]]:
        """Every task's metrics on `split`; `served` is `model` as it computes (torch.compile'd)."""
        self.world.average_buffers(model)  # one model on every rank: batch-norm statistics agree
        return evaluate(model if served is None else served, split, self.spec.tasks, data, device=self.device,
                        dtype=self.dtype, precision=self.precision, world=self.world)

    def run(self, name: str, stage: StageSpec, split: Split, step: StepFunction, model: nn.Module,
            optimizers: Sequence[torch.optim.Optimizer], data: TaskData, state: dict[str, Any] | None, *,
            scheduled: Sequence[torch.optim.Optimizer] | None = None,
            follow_progress: Callable[[float], None] | None = None,
            save_extra: Callable[[], dict[str, Any]] | None = None, served: nn.Module | None = None,
            select_on: Callable[[], dict[str, dict[str, float]]] | None = None) -> None:
        """Run (or, from `state`, resume) stage `name`. `scheduled` (default: all `optimizers`)
        follow `stage.lr_schedule`; `follow_progress(progress)`, if given, runs before every step
        too (the search's τ and λ); `save_extra()` adds to every checkpoint; `served` is the
        model as it computes, where that is not `model` itself (torch.compile'd). `select_on()`,
        if given, gives the validation metrics the stage keeps its best epoch by (recorded in the
        history as `select/...`); otherwise `train.select: best` keeps the final stage's best."""
        selects = select_on is not None or (self.spec.train.select == "best" and name == self.spec.train.final_stage())
        run = StageRun(self, name, stage, step, model, optimizers, data,
                       scheduled=optimizers if scheduled is None else scheduled, follow_progress=follow_progress,
                       save_extra=save_extra, served=served, select_on=select_on,
                       best=BestEpoch(self.spec.tasks) if selects else None)
        spec = self.spec
        loop = StageLoop(name, split, spec.data.batch_size, stage.epochs, stage.steps_per_epoch, spec.seed, run.step,
                         run.checkpoint, run.end_of_epoch, spec.train.checkpoint_every, spec.train.checkpoint_seconds,
                         self.progress, self.device, before_step=run.before_step, world=self.world)
        self.stage_steps[name] = loop.total_steps()
        position, totals = run.restore(state) if state is not None else (None, None)
        try:
            loop.run(position, totals)
        except DivergedError as err:
            kept = ("the last good checkpoint is kept" if self.checkpoint_path.is_file()
                    else "no checkpoint was written before it")
            raise DivergedError(f"{err}; {kept} (try a lower lr)") from None
        except Interrupted as err:
            raise Interrupted(f"{err} ({self.checkpoint_path}); --resume continues the run from it") from None
        if run.best is not None and run.best.model is not None:
            model.load_state_dict(run.best.model)
            self.selected[name] = run.best.epoch + 1
            self.echo(f"{name}: kept epoch {run.best.epoch + 1} of {stage.epochs}, the best on validation")
        run.clock()


class StageRun:
    """One stage's run under a `StageRunner`: what its `StageLoop` calls before and after every step,
    at the end of every epoch and at every checkpoint, and the resume from a checkpoint."""

    def __init__(self, runner: StageRunner, name: str, stage: StageSpec, train_step: StepFunction,
                 model: nn.Module, optimizers: Sequence[torch.optim.Optimizer], data: TaskData, *,
                 scheduled: Sequence[torch.optim.Optimizer], follow_progress: Callable[[float], None] | None,
                 save_extra: Callable[[], dict[str, Any]] | None, served: nn.Module | None,
                 select_on: Callable[[], dict[str, dict[str, float]]] | None, best: BestEpoch | None) -> None:
        self.runner, self.name, self.stage, self.train_step = runner, name, stage, train_step
        self.model, self.optimizers, self.data, self.scheduled = model, optimizers, data, scheduled
        self.follow_progress, self.save_extra, self.served, self.select_on = follow_progress, save_extra, served, select_on
        self.best = best  # the stage's best epoch on validation, where it selects one
        # a resumed stage's clocks go on from the seconds it had spent
        self.started = time.perf_counter() - runner.stage_seconds.get(name, 0.0)
        self.started_cpu = time.process_time() - runner.stage_cpu_seconds.get(name, 0.0)

    def clock(self) -> None:
        self.runner.stage_seconds[self.name] = time.perf_counter() - self.started
        self.runner.stage_cpu_seconds[self.name] = time.process_time() - self.started_cpu

    def before_step(self, progress: float) -> None:
        set_learning_rates(self.scheduled, progress, schedule=self.stage.lr_schedule)
        if self.follow_progress is not None:
            self.follow_progress(progress)

    def step(self, batch, epoch: int, index: int) -> tuple[float, float]:
        result = self.train_step(batch, epoch, index)
        if self.runner.weighting is not None:
            self.runner.weighting.after_step(self.runner.precision)
        self.runner.precision.update()
        return result

    def end_of_epoch(self, epoch: int, totals: EpochTotals) -> None:
        runner, name = self.runner, self.name
        metrics = runner.evaluate(self.model, self.data.val, self.data, self.served)
        chosen = metrics if self.select_on is None else self.select_on()
        if self.best is not None:
            self.best.offer(epoch, chosen, self.model)
        row = {"stage": name, "epoch": epoch + 1, "epoch_global": len(runner.history) + 1,
               "train/loss": totals.loss / max(totals.steps, 1),
               "train/squeeze": totals.squeeze / max(totals.steps, 1), **flatten_metrics(metrics, "val"),
               **(flatten_metrics(chosen, "select") if self.select_on is not None else {})}
        if runner.precision.scaler.is_enabled():
            row["train/skipped_steps"] = runner.precision.skipped  # float16 steps skipped so far
        if runner.weighting is not None:
            runner.weighting.end_epoch()
            row.update({f"weight/{t.name}": w for t, w in zip(runner.spec.tasks, runner.weighting.weights())})
        runner.history.append(row)
        if runner.board:
            runner.board.epoch(row, row["epoch_global"], self.optimizers, self.model)
        shown = "  ".join(f"{k[4:]}={v:.4f}" for k, v in row.items() if k.startswith("val/"))
        runner.echo(f"{name} epoch {epoch + 1}/{self.stage.epochs}: loss {row['train/loss']:.4f}  {shown}")

    def checkpoint(self, position: Position, totals: EpochTotals) -> None:
        self.clock()
        runner = self.runner
        payload = {"stage": self.name, "epoch": position.epoch, "step": position.step,
                   "totals": totals.as_dict(), "model": self.model.state_dict(),
                   "optimizers": [o.state_dict() for o in self.optimizers], "history": runner.history,
                   "stage_seconds": runner.stage_seconds, "stage_cpu_seconds": runner.stage_cpu_seconds,
                   "stage_steps": runner.stage_steps, "world_size": runner.world.size}
        if runner.weighting is not None:
            payload["weighting"] = runner.weighting.state_dict()
        if runner.precision.scaler.is_enabled():
            payload["precision"] = runner.precision.state_dict()
        if self.best is not None:
            payload["best_epoch"] = self.best.state_dict()
        save_checkpoint(runner.checkpoint_path, {**payload, **(self.save_extra() if self.save_extra else {})})

    def restore(self, state: dict[str, Any]) -> tuple[Position, EpochTotals]:
        """Put back what `checkpoint` saved; the position and running totals the loop goes on from."""
        runner = self.runner
        for optimizer, saved in zip(self.optimizers, state["optimizers"]):
            stage_lrs = [group["lr"] for group in optimizer.param_groups]
            optimizer.load_state_dict(saved)
            for group, lr in zip(optimizer.param_groups, stage_lrs):  # the spec's lr, changed on --resume or not
                group["initial_lr"] = group["lr"] = lr
        if runner.weighting is not None and "weighting" in state:
            runner.weighting.load_state_dict(state["weighting"])
        if "precision" in state:
            runner.precision.load_state_dict(state["precision"])
        if self.best is not None and "best_epoch" in state:
            self.best.load_state_dict(state["best_epoch"])
        raw = state.get("totals") or {}
        return Position(state["epoch"], state["step"]), EpochTotals(raw.get("loss", 0.0), raw.get("squeeze", 0.0),
                                                                    int(raw.get("steps", 0)))


def warmup(runner: StageRunner, network: nn.Module, data: TaskData, state: dict[str, Any] | None) -> None:
    """Every gate 1: all tasks share every state, which the supernet then computes once; with
    `edge_dropout`, each step a sub-network with some gates 0 (validation: every gate 1)."""
    from dagir.backends.torch_supernet import head_parameters, weight_parameters
    stage = runner.spec.train.warmup
    network.gates.mode = "ones"
    network.train()
    optimizer = make_optimizer(weight_parameters(network) + head_parameters(network), stage)
    served = serving(runner, network, runner.spec.train.compile_supernet)
    step = supervised_step(lambda inputs: runner.forward(served, inputs), optimizer, runner.spec.tasks,
                           runner.weighting, runner.precision, runner.descent)
    if stage.edge_dropout > 0:  # each step trains a sub-network drawn per (seed, epoch, step); validation the whole
        from .search import step_generator
        whole_step = step

        def step(batch, epoch: int, index: int) -> tuple[float, float]:
            gates = network.gates
            gates.fix(gates.dropped(stage.edge_dropout, step_generator(runner.spec.seed, epoch, index)))
            gates.mode = "fixed"
            try:
                return whole_step(batch, epoch, index)
            finally:
                gates.mode = "ones"
    runner.run("warmup", stage, data.train, step, network, [optimizer], data, state, served=served)


def search(runner: StageRunner, supernet: nn.Module, data: TaskData, state: dict[str, Any] | None,
           flow_compactness: Callable[[], torch.Tensor], budget: SearchBudget | None = None) -> None:
    """Train the decisions with the stage's strategy; Θ too where the strategy trains it.
    `flow_compactness()` gives the flow or cost squeeze's per-slot weights (computed once per epoch);
    `budget`, the budget held inside the search (its multipliers are checkpointed with the stage)."""
    from dagir.backends.torch_supernet import head_parameters, weight_parameters

    from .search import SearchContext, make_strategy
    spec, stage = runner.spec, runner.spec.train.search
    squeeze, schedule = spec.search.squeeze, spec.search.gates.temperature
    supernet.gates.mode = "soft"
    weights = weight_parameters(supernet)
    trains_weights = stage.train_weights or stage.strategy == "reinforce"
    for parameter in weights:
        parameter.requires_grad_(trains_weights)
    train, arch_batch = search_splits(runner, data.train)
    epoch_now: dict[str, Any] = {"epoch": -1, "compactness": None}

    def compactness() -> torch.Tensor:
        if epoch_now["compactness"] is None:
            epoch_now["compactness"] = flow_compactness()
        return epoch_now["compactness"]

    served = serving(runner, supernet, spec.train.compile_supernet)
    context = SearchContext(supernet, stage, squeeze, spec.tasks, lambda inputs: runner.forward(served, inputs),
                            weights, head_parameters(supernet), spec.seed, arch_batch, compactness,
                            weighting=runner.weighting, precision=runner.precision, budget=budget,
                            descent=runner.descent)
    strategy = make_strategy(context)
    if state is not None:
        strategy.load_state_dict(state.get("strategy", {}))
        if budget is not None:
            budget.load_state_dict(state.get("budget", {}))

    def follow_progress(progress: float) -> None:
        supernet.gates.tau = temperature(progress, start=schedule.start, end=schedule.end, schedule=schedule.schedule)
        context.squeeze_weight = squeeze.weight * squeeze_ramp(progress, ramp=squeeze.ramp)
        context.sharing_weight = spec.search.sharing.weight * squeeze_ramp(progress, ramp=squeeze.ramp)
        if budget is not None:
            budget.progress = progress

    def step(batch, epoch: int, index: int) -> tuple[float, float]:
        if epoch_now["epoch"] != epoch:  # an epoch's first step (or a resumed one's): after validation
            epoch_now.update(epoch=epoch, compactness=None)
            supernet.train()  # every mode change within an epoch restores what it changed
            if not trains_weights:  # frozen Θ: batch norm keeps its warm-up statistics
                for name, child in supernet.named_children():
                    if name.startswith(WEIGHT_PREFIXES):
                        child.eval()
        return strategy.step(batch, epoch, index)

    def discretised_metrics() -> dict[str, dict[str, float]]:  # `select: best` ranks the hard network
        soft = supernet.gates.mode
        supernet.gates.mode = "hard"
        try:
            with recalibrated_norms(supernet, lambda inputs: runner.forward(served, inputs), train,
                                    batches=stage.select_norm_batches, batch_size=spec.data.batch_size,
                                    seed=epoch_order_seed(spec.seed, "select-norm", 0), device=runner.device):
                return runner.evaluate(supernet, data.val, data, served)
        finally:
            supernet.gates.mode = soft

    try:
        runner.run("search", stage, train, step, supernet, strategy.optimizers, data, state,
                   scheduled=strategy.scheduled, follow_progress=follow_progress,
                   save_extra=lambda: {"strategy": strategy.state_dict(),
                                       **({"budget": budget.state_dict()} if budget is not None else {})},
                   served=served,
                   select_on=discretised_metrics if stage.select == "best" else None)
    finally:  # the supernet as the after-search passes read it, and Θ trainable again, however the stage ended
        supernet.gates.mode, supernet.gates.relaxation = "soft", "sigmoid"
        for parameter in weights:
            parameter.requires_grad_(True)


def search_splits(runner: StageRunner, train: Split):
    """The split the weight steps loop over, and the architecture batch of each step: from a
    held-out part of the training set (`train.search.split`), disjoint from the rest, or None."""
    spec = runner.spec
    if spec.train.search.split is None:
        return train, lambda epoch, index: None
    rest, held = train.hold_out(spec.train.search.split, spec.seed)
    cache: dict[int, list] = {}

    def arch_batch(epoch: int, index: int):
        if epoch not in cache:  # the held-out batches of an epoch, in an order fixed by (seed, epoch)
            cache.clear()
            cache[epoch] = epoch_batches(held, spec.data.batch_size, epoch_order_seed(spec.seed, "search-arch", epoch),
                                         runner.world)
        inputs, targets = cache[epoch][index % len(cache[epoch])]
        return inputs.to(runner.device), {k: v.to(runner.device) for k, v in targets.items()}

    return rest, arch_batch


def finetune(runner: StageRunner, compact: nn.Module, supernet: nn.Module, data: TaskData,
             state: dict[str, Any] | None, keep: dict[str, Any] | None = None) -> nn.Module:
    """Train Θ of the kept edges, the heads and batch norm (statistics included) of the compact
    network. Batch norm re-learns what the discretised network feeds it: the warm-up statistics
    were gathered with every edge on. A module the compact network calls on several states has a
    batch norm per state (`PerStateNorm`), so no statistics are averaged over differing inputs, or,
    with `search.reduction.untie`, a copy of its weights per state (`PerStateCopy`). `keep`: what the
    search left for the results, checkpointed with the stage."""
    stage = runner.spec.train.finetune
    optimizer = make_optimizer(list(compact.parameters()), stage)
    if state is not None:
        compact.load_state_dict(state["model"])
    served = serving(runner, compact, runner.spec.train.compile)
    compact.train()  # validation puts it back in training mode
    step = supervised_step(lambda inputs: runner.forward(served, inputs), optimizer, runner.spec.tasks,
                           runner.weighting, runner.precision, runner.descent)
    runner.run("finetune", stage, data.train, step, compact, [optimizer], data, state,
               save_extra=lambda: {"supernet": supernet.state_dict(), **(keep or {})}, served=served)
    return served


def serving(runner: StageRunner, network: nn.Module, compiled: bool) -> nn.Module:
    """The network as a stage's steps and validation call it: `torch.compile`d where `compiled`
    (`train.compile` for the compact network, `train.compile_supernet` for the supernet), sharing
    its parameters; checkpoints and the export keep the plain module."""
    return torch.compile(network) if compiled else network
