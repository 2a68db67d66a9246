"""`dagir run`: the whole method, from a spec to a compact, evaluated, exported multi-task network.

    compile (before-search pipeline) -> lower the supernet
    warm-up   train Θ and the heads, every gate 1
    search    train the gates A, B, Γ and the heads (Θ frozen unless train_weights), squeeze loss
    import the gates into the IR -> after-search pipeline (discretize, flow-reduce, share-states)
    lower the compact network (weights from the supernet) -> fine-tune -> evaluate -> export

OUT/
  spec.resolved.yaml, run.json (where the run is), history.json, metrics.json
  passes/before-search/NN-name.json|.dot|.svg, passes/after-search/...
  supernet.py, architecture.json (the searched IR with its gates), compact.json (the compact IR)
  compact.py + compact.safetensors (the exported network), gates.png, curves.png
  checkpoints/latest.pt (after each stage and every `checkpoint_every` steps)
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from .compile_job import dump_ir
from .datasets import load_dataset
from .datasets.splits import Split
from .errors import UserError
from .ir import IR
from .ir_stats import edges_per_task
from .pass_manager import PassManager, PassResult
from .pipeline import after_search_pipeline, before_search_pipeline, seed_ir
from .run_folder import write_text
from .spec import Spec, check_data_root
from .training.checkpoint import load_checkpoint, save_checkpoint
from .training.loop import (EpochTotals, Position, StageLoop, epoch_batches, epoch_order_seed, evaluate,
                            flatten_metrics, make_optimizer, supervised_step)
from .training.plots import plot_curves, plot_gate_heatmaps
from .training.schedules import set_learning_rates, squeeze_ramp, temperature

STAGES = ("warmup", "search", "finetune")
Echo = Callable[[str], None]


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: cuda was asked for, but no CUDA device is available")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def effective_gates(ir: IR, tau: float) -> IR:
    """The IR with each logit divided by τ, so σ(logit) (or the softmax) is the gate the search ended with."""
    out = ir.copy()
    for name, decision in out.decisions.items():
        out.decisions[name] = decision.with_logits(
            {owner: [v / tau for v in values] for owner, values in decision.logits.items()})
    return out


class Run:
    """One run of the method in an output folder; `execute()` does (or resumes) all of it."""

    def __init__(self, spec: Spec, out: Path, *, resume: bool = False, progress: bool = True,
                 echo: Echo = print) -> None:
        self.spec, self.out, self.resume, self.progress, self.echo = spec, Path(out), resume, progress, echo
        self.device = pick_device(spec.train.device)
        # bfloat16 runs float32 weights under autocast
        self.dtype = torch.float64 if spec.train.precision == "float64" else torch.float32
        self.autocast = spec.train.precision == "bfloat16"
        self.history: list[dict[str, Any]] = []
        self.stage_seconds: dict[str, float] = {}
        self.checkpoint_path = self.out / "checkpoints" / "latest.pt"

    # -- the method ---------------------------------------------------------------------------
    def execute(self) -> dict[str, Any]:
        spec = self.spec
        state = self._start()
        torch.manual_seed(spec.seed)
        check_data_root(spec)
        data = load_dataset(spec.data.dataset, spec.data.options, spec.data.root, spec.data.val_split, spec.seed)
        self._check_data(data)
        ir = self.ir = self._compile()

        from dagir.backends.torch_supernet import import_gates_from_module, lower_supernet
        supernet = lower_supernet(ir, dtype=self.dtype).to(self.device)
        write_text(self.out / "supernet.py", supernet.code)
        stage = state["stage"] if state else "warmup"
        if stage in ("warmup", "search"):
            if state:
                supernet.load_state_dict(state["model"])
            if stage == "warmup":
                self._warmup(supernet, data, state)
            self._search(supernet, data, state if stage == "search" else None)
            state = None
        else:
            supernet.load_state_dict(state["supernet"])
        searched = effective_gates(import_gates_from_module(supernet, ir), self._final_tau())
        write_text(self.out / "architecture.json", searched.to_json())
        plot_gate_heatmaps(searched, self.out / "gates.png")
        compact_ir = self._post_search(searched)

        from dagir.backends.torch_compact import lower_compact
        compact = lower_compact(compact_ir, supernet).to(self.device)
        self._finetune(compact, supernet, data, state)
        return self._finish(compact, compact_ir, searched, supernet, data)

    def _start(self) -> dict[str, Any] | None:
        out = self.out
        if self.resume:
            state = load_checkpoint(self.checkpoint_path)
            self.history = list(state.get("history", []))
            self.stage_seconds = dict(state.get("stage_seconds", {}))
            self.echo(f"resuming from {self.checkpoint_path}: {state['stage']} epoch "
                      f"{state['epoch'] + 1} step {state['step']}")
            if state["stage"] == "done":
                raise UserError(f"{out}: this run is already finished (metrics.json holds its results)")
            return state
        if self.checkpoint_path.exists():
            raise UserError(f"{out}: already holds a run; continue it with --resume, or pass "
                            "--overwrite to start again")
        try:
            out.mkdir(parents=True, exist_ok=True)
            write_text(out / "spec.resolved.yaml", self.spec.resolved_yaml())
        except OSError as err:
            raise UserError(f"{out}: cannot write the output folder ({err.strerror or err})") from None
        return None

    def _check_data(self, data) -> None:
        if data.input_shape != tuple(seed_ir(self.spec).input_node().type.shape):
            raise self.spec.error(("network", "input"), f"the data set's inputs are {list(data.input_shape)}, "
                                  f"not {list(seed_ir(self.spec).input_node().type.shape)}")

    def _compile(self) -> IR:
        folder = self.out / "passes" / "before-search"
        folder.mkdir(parents=True, exist_ok=True)

        def dump(result: PassResult) -> None:
            dump_ir(result.ir, folder / f"{result.index:02d}-{result.pass_.name}", draw=True)

        return PassManager(before_search_pipeline(self.spec), on_pass=dump).run(seed_ir(self.spec))

    def _post_search(self, searched: IR) -> IR:
        folder = self.out / "passes" / "after-search"
        folder.mkdir(parents=True, exist_ok=True)
        passes = after_search_pipeline(self.spec)

        def dump(result: PassResult) -> None:
            dump_ir(result.ir, folder / f"{result.index:02d}-{result.pass_.name}", draw=True)

        compact_ir = PassManager(passes, on_pass=dump).run(searched, first_index=1)
        write_text(self.out / "compact.json", compact_ir.to_json())
        return compact_ir

    def _final_tau(self) -> float:
        """The τ the architecture steps ended with: the stage's fixed `arch_tau`, or the schedule's last."""
        if self.spec.train.search.arch_tau is not None:
            return self.spec.train.search.arch_tau
        t = self.spec.search.gates.temperature
        return temperature(1.0, start=t.start, end=t.end, schedule=t.schedule)

    # -- stages -------------------------------------------------------------------------------
    def _loop(self, name: str, stage_spec, split: Split, step, model, optimizers, data, *, save_extra=None,
              scheduled=None, follow_progress=None):
        """The stage's loop; `scheduled` (default: all `optimizers`) follow `stage_spec.lr_schedule`,
        and `follow_progress(progress)`, if given, runs before every step too (the search's τ, λ)."""
        tasks = self.spec.tasks
        started = time.perf_counter() - self.stage_seconds.get(name, 0.0)

        def end_of_epoch(epoch: int, totals: EpochTotals) -> None:
            metrics = evaluate(model, data.val, tasks, data, device=self.device, dtype=self.dtype)
            row = {"stage": name, "epoch": epoch + 1, "epoch_global": len(self.history) + 1,
                   "train/loss": totals.loss / max(totals.steps, 1),
                   "train/squeeze": totals.squeeze / max(totals.steps, 1), **flatten_metrics(metrics, "val")}
            self.history.append(row)
            shown = "  ".join(f"{k[4:]}={v:.4f}" for k, v in row.items() if k.startswith("val/"))
            self.echo(f"{name} epoch {epoch + 1}/{stage_spec.epochs}: loss {row['train/loss']:.4f}  {shown}")

        def checkpoint(position: Position, totals: EpochTotals) -> None:
            self.stage_seconds[name] = time.perf_counter() - started
            payload = {"stage": name, "epoch": position.epoch, "step": position.step,
                       "totals": totals.as_dict(), "model": model.state_dict(),
                       "optimizers": [o.state_dict() for o in optimizers], "history": self.history,
                       "stage_seconds": self.stage_seconds}
            save_checkpoint(self.checkpoint_path, {**payload, **(save_extra() if save_extra else {})})

        def before_step(progress: float) -> None:
            set_learning_rates(optimizers if scheduled is None else scheduled, progress,
                               schedule=stage_spec.lr_schedule)
            if follow_progress is not None:
                follow_progress(progress)

        loop = StageLoop(name, split, self.spec.data.batch_size, stage_spec.epochs, stage_spec.steps_per_epoch,
                         self.spec.seed, step, checkpoint, end_of_epoch, self.spec.train.checkpoint_every,
                         self.progress, self.device, before_step=before_step)
        return loop, started

    def _resume_loop(self, loop: StageLoop, state, optimizers, name: str, started: float) -> None:
        position, totals = None, None
        if state is not None:
            for optimizer, saved in zip(optimizers, state["optimizers"]):
                optimizer.load_state_dict(saved)
            position = Position(state["epoch"], state["step"])
            raw = state.get("totals") or {}
            totals = EpochTotals(raw.get("loss", 0.0), raw.get("squeeze", 0.0), int(raw.get("steps", 0)))
        loop.run(position, totals)
        self.stage_seconds[name] = time.perf_counter() - started

    def _warmup(self, network, data, state) -> None:
        """Every gate 1: all tasks share every state, which the supernet then computes once."""
        from dagir.backends.torch_supernet import head_parameters, weight_parameters
        stage = self.spec.train.warmup
        network.gates.mode = "ones"
        network.train()
        optimizer = make_optimizer(weight_parameters(network) + head_parameters(network), stage)
        step = supervised_step(lambda inputs: self._forward(network, inputs), optimizer, self.spec.tasks)
        loop, started = self._loop("warmup", stage, data.train, step, network, [optimizer], data)
        self._resume_loop(loop, state, [optimizer], "warmup", started)

    def _search(self, supernet, data, state) -> None:
        """Train the decisions with the stage's strategy (`dagir.training.search`)."""
        from dagir.backends.torch_supernet import head_parameters, weight_parameters

        from .training.search import SearchContext, make_strategy
        spec, stage = self.spec, self.spec.train.search
        squeeze, schedule = spec.search.squeeze, spec.search.gates.temperature
        supernet.gates.mode = "soft"
        weights = weight_parameters(supernet)
        trains_weights = stage.train_weights or stage.strategy == "reinforce"
        for parameter in weights:
            parameter.requires_grad_(trains_weights)
        train, arch_batch = self._search_splits(data.train)
        epoch_now = {"epoch": -1, "compactness": None}

        def compactness():
            if epoch_now["compactness"] is None:  # the flow squeeze's weights, once per epoch
                epoch_now["compactness"] = self._flow_compactness(supernet)
            return epoch_now["compactness"]

        context = SearchContext(supernet, stage, squeeze, spec.tasks, lambda inputs: self._forward(supernet, inputs),
                                weights, head_parameters(supernet), spec.seed, arch_batch, compactness)
        strategy = make_strategy(context)
        if state is not None:
            strategy.load_state_dict(state.get("strategy", {}))

        def follow_progress(progress: float) -> None:
            supernet.gates.tau = temperature(progress, start=schedule.start, end=schedule.end,
                                             schedule=schedule.schedule)
            context.squeeze_weight = squeeze.weight * squeeze_ramp(progress, ramp=squeeze.ramp)

        def step(batch, epoch, index):
            supernet.train()
            if not trains_weights:  # frozen Θ: batch norm keeps its warm-up statistics
                for name, child in supernet.named_children():
                    if name.startswith(("edge_", "node_", "op_")):
                        child.eval()
            if epoch_now["epoch"] != epoch:
                epoch_now.update(epoch=epoch, compactness=None)
            return strategy.step(batch, epoch, index)

        loop, started = self._loop("search", stage, train, step, supernet, strategy.optimizers, data,
                                   scheduled=strategy.scheduled, follow_progress=follow_progress,
                                   save_extra=lambda: {"strategy": strategy.state_dict()})
        self._resume_loop(loop, state, strategy.optimizers, "search", started)
        supernet.gates.mode, supernet.gates.relaxation = "soft", "sigmoid"
        for parameter in weights:
            parameter.requires_grad_(True)

    def _search_splits(self, train: Split):
        """The split the weight steps loop over, and the architecture batch of each step: from a
        held-out part of the training set (`train.search.split`), disjoint from the rest, or None."""
        stage = self.spec.train.search
        if stage.split is None:
            return train, lambda epoch, index: None
        rest, held = train.hold_out(stage.split, self.spec.seed)
        batch_size = self.spec.data.batch_size
        cache: dict[int, list] = {}

        def arch_batch(epoch: int, index: int):
            if epoch not in cache:  # the held-out batches of an epoch, in an order fixed by (seed, epoch)
                cache.clear()
                cache[epoch] = epoch_batches(held, batch_size, epoch_order_seed(self.spec.seed, "search-arch", epoch))
            batches = cache[epoch]
            inputs, targets = batches[index % len(batches)]
            return inputs.to(self.device), {k: v.to(self.device) for k, v in targets.items()}

        return rest, arch_batch

    def _forward(self, model, inputs):
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return model(inputs.to(self.dtype))

    def _flow_compactness(self, supernet) -> torch.Tensor:
        """1 - φ_e/Φ for every gate slot, from the current gates (detached)."""
        from dagir.backends.torch_supernet import import_gates_from_module

        from .flow import task_flow
        ir = effective_gates(import_gates_from_module(supernet, self.ir), supernet.gates.tau)
        flows = {t: task_flow(ir, t) for t in ir.task_names}
        names = {edge.name: key for key, edge in ir.edges.items()}
        weights = torch.ones(len(supernet.gates.entries), dtype=self.dtype, device=self.device)
        for (edge, task), slot in supernet.gates.slots.items():
            flow = flows[task]
            share = flow.edge.get(names[edge], 0.0) / flow.total if flow.total > 0 else 0.0
            weights[slot] = 1.0 - share
        return weights

    def _finetune(self, compact, supernet, data, state) -> None:
        """Train Θ of the kept edges, the heads and batch norm (statistics included) of the compact
        network. Batch norm re-learns what the discretised network feeds it: the warm-up statistics
        were gathered with every edge on. A module the compact network calls on several states has
        a batch norm per state (`PerStateNorm`), so no statistics are averaged over differing inputs."""
        stage = self.spec.train.finetune
        optimizer = make_optimizer(list(compact.parameters()), stage)
        if state is not None:
            compact.load_state_dict(state["model"])

        def forward(inputs):
            compact.train()
            return self._forward(compact, inputs)

        step = supervised_step(forward, optimizer, self.spec.tasks)
        loop, started = self._loop("finetune", stage, data.train, step, compact, [optimizer], data,
                                   save_extra=lambda: {"supernet": supernet.state_dict()})
        self._resume_loop(loop, state, [optimizer], "finetune", started)

    # -- results ------------------------------------------------------------------------------
    def _finish(self, compact, compact_ir: IR, searched: IR, supernet, data) -> dict[str, Any]:
        from dagir.backends.torch_compact import export_compact
        from dagir.backends.torch_supernet import (count_parameters, gate_parameters, head_parameters,
                                                   weight_parameters)

        from .compact_cost import compact_macs, compact_parameters
        from .ir_stats import count_macs

        test = evaluate(compact, data.test, self.spec.tasks, data, device=self.device, dtype=self.dtype)
        export_compact(compact, compact_ir, self.out)
        discretize = compact_ir.meta.get("discretize", {})
        metrics = {
            "name": self.spec.name, "test": test,
            "compact": {"parameters": count_parameters(compact),
                        "parameters_per_task": compact_parameters(compact_ir)["per_task"],
                        "macs": compact_macs(compact_ir),
                        "edges": len(compact_ir.edges), "edges_per_task": edges_per_task(compact_ir)},
            "supernet": {"parameters": count_parameters(weight_parameters(supernet) + head_parameters(supernet)),
                         "gates": count_parameters(gate_parameters(supernet)),
                         "macs_shared": count_macs(searched),
                         "edges": len(searched.edges), "edges_per_task": edges_per_task(searched)},
            "discretization_gap": discretize.get("gap"),
            "flow_reduce": compact_ir.meta.get("flow_reduce"),
            "share_states": {k: v for k, v in compact_ir.meta.get("share_states", {}).items() if k != "states"},
            "stage_seconds": self.stage_seconds,
        }
        write_text(self.out / "metrics.json", json.dumps(metrics, indent=1))
        write_text(self.out / "history.json", json.dumps(self.history, indent=1))
        plot_curves(self.history, self.out / "curves.png")
        save_checkpoint(self.checkpoint_path, {"stage": "done", "epoch": 0, "step": 0, "history": self.history,
                                               "stage_seconds": self.stage_seconds})
        return metrics
