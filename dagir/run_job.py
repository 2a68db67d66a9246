"""`dagir run`: the whole method, from a spec to a compact, evaluated, exported multi-task network.

    compile (before-search pipeline) -> lower the supernet
    warm-up   train Θ and the heads, every gate 1                       (dagir.training.stages)
    search    train the decisions with the stage's strategy, squeeze   (dagir.training.search)
    import the logits into the IR -> after-search pipeline (discretize, flow-reduce, fit-budget, share-states)
    lower the compact network (weights from the supernet, or fresh) -> fine-tune -> evaluate -> export

OUT/
  spec.resolved.yaml, history.json, metrics.json, .dagir.lock (who holds the folder)
  passes/before-search/NN-name.json|.dot|.svg, passes/after-search/...
  supernet.py, supernet.rewrites.json (the lowering's named rewrites: fused edges, summed linear edges), architecture.json (the searched IR with its gates), compact.json (the compact IR)
  compact.py + compact.safetensors (the exported network), gates.png, curves.png
  checkpoints/latest.pt (after each stage, and every `checkpoint_every` steps and every epoch at most once a
  `checkpoint_seconds`)

Under torchrun every rank runs this same job (`dagir.training.distributed`): rank 0 in OUT, the
others in a scratch folder they discard, reading OUT's checkpoint when they resume.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from .compile_job import dump_ir
from .datasets import load_spec_data
from .errors import UserError
from .ir import IR
from .ir_stats import edges_per_task
from .pass_manager import PassManager, PassResult
from .pipeline import after_search_pipeline, compile_spec, seed_ir
from .run_folder import write_text
from .spec import Spec
from .spec_checks import check_data_root
from .training import stages
from .training.budget import SearchBudget
from .training.checkpoint import load_checkpoint, save_checkpoint
from .training.distributed import World, scratch_folder
from .training.norms import batch_norms
from .training.plots import plot_curves, plot_gate_heatmaps
from .training.schedules import temperature
from .training.stages import StageRunner

Echo = Callable[[str], None]


def _quiet(text: str) -> None:
    """The echo of ranks other than 0: rank 0 alone speaks."""


def pick_device(choice: str, world: World = World()) -> torch.device:
    """The run's device: `cpu`, `cuda` (this rank's GPU under torchrun) or `auto`."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: cuda was asked for, but no CUDA device is available")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device("cuda", world.local_rank) if choice == "cuda" and world.distributed else torch.device(choice)


def check_compiler(spec: Spec, device: torch.device) -> None:
    """`train.compile` and `train.compile_supernet` on the CPU need a C++ compiler (torch.compile's
    CPU code is C++): say so before anything trains, not at the stage that compiles."""
    import shutil
    asked = [field for field in ("compile", "compile_supernet") if getattr(spec.train, field)]
    if asked and device.type == "cpu" and not any(
            shutil.which(name) for name in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++")):
        raise spec.error(("train", asked[0]), "torch.compile on the CPU needs a C++ compiler (g++, c++ or "
                                              f"clang++, or $CXX); install one, or set train.{asked[0]}: false")


def effective_gates(ir: IR, tau: float) -> IR:
    """The IR with each logit divided by τ, so σ(logit) (or the softmax) is the gate the search ended with."""
    out = ir.copy()
    for name, decision in out.decisions.items():
        out.decisions[name] = decision.with_logits(
            {owner: [v / tau for v in values] for owner, values in decision.logits.items()})
    return out


def resume_position(state: dict[str, Any], spec: Spec) -> str:
    """Where a checkpoint stands, as a person reads it: "search epoch 3 of 10, step 40", or
    "search finished (10 of 10 epochs)" for one written at the end of a stage."""
    stage, epoch, step = state["stage"], state["epoch"], state["step"]
    epochs = getattr(spec.train, stage).epochs
    if epoch >= epochs:
        return f"{stage} finished ({epoch} of {epochs} epochs)"
    return f"{stage} epoch {epoch + 1} of {epochs}, step {step}"


class Run:
    """One run of the method in an output folder; `execute()` does (or resumes) all of it."""

    def __init__(self, spec: Spec, out: Path, *, resume: bool = False, progress: bool = True,
                 echo: Echo = print, tensorboard: bool | None = None, world: World = World(),
                 mlflow: str | None = None) -> None:
        """`tensorboard`: write OUT/tensorboard/ (True: required; None: when the package is installed).
        `mlflow`: a tracking URI to log the run to (`dagir.training.tracking`).
        `world`: this process's rank under torchrun; a rank other than 0 writes nothing into OUT."""
        self.spec, self.out, self.resume, self.progress, self.echo = spec, Path(out), resume, progress, echo
        self.tensorboard, self.world, self.mlflow = tensorboard, world, mlflow
        self.resume_path = self.out / "checkpoints" / "latest.pt"
        if not world.main:
            self.out, self.progress, self.echo, self.tensorboard = Path(scratch_folder(world)), False, _quiet, False
            self.mlflow = None
        self.device = pick_device(spec.train.device, world)
        check_compiler(spec, self.device)
        self.checkpoint_path = self.out / "checkpoints" / "latest.pt"
        self.search_budget: dict[str, Any] | None = None  # the budget held inside the search, as it ended
        self._data = self._generator_after_data = None  # `load_data`'s
        self.runner = StageRunner(spec, self.device, self.checkpoint_path, progress=self.progress, echo=self.echo,
                                  world=world)

    # -- the method ---------------------------------------------------------------------------
    def execute(self) -> dict[str, Any]:
        failed = True
        try:
            state = self._start()
            self.runner.board = self._open_boards()
            metrics = self._execute(state)
            failed = False
            return metrics
        finally:
            if self.runner.board:
                self.runner.board.close(failed=failed)  # an MLflow run ends FAILED when the run did
            if not self.world.main:
                shutil.rmtree(self.out, ignore_errors=True)

    def _open_boards(self):
        """What the run logs to as it goes: TensorBoard (when installed, unless turned off), MLflow."""
        from .training.board import Boards, RunBoard, tensorboard_available
        if self.tensorboard and not tensorboard_available():  # before an MLflow run is started
            raise UserError("--tensorboard needs the tensorboard package: pip install 'dagir[tensorboard]'")
        boards = []
        if self.mlflow is not None:
            from .training.tracking import MlflowBoard
            boards.append(MlflowBoard(self.mlflow, self.out, self.spec.resolved_dict(), self.spec.name,
                                      resume=self.resume))
        if self.tensorboard is not False and not tensorboard_available():
            self.echo("note: tensorboard is not installed, so no OUT/tensorboard/ (pip install 'dagir[tensorboard]')")
        elif self.tensorboard is not False:
            boards.append(RunBoard(self.out / "tensorboard",
                                   purge_step=len(self.runner.history) + 1 if self.resume else None))
        return Boards(boards)

    def _images(self, folder: Path, prefix: str) -> None:
        board = self.runner.board
        if board:
            for png in sorted(folder.glob("*.png")):
                board.image(f"{prefix}/{png.stem}", png)

    def load_data(self) -> Any:
        """The run's data, loaded and checked (once): called before OUT is prepared, a data set that
        fails its checks leaves OUT as it was. torch's generator then goes on from where the data left it."""
        if self._data is None:
            spec = self.spec
            torch.manual_seed(spec.seed)
            check_data_root(spec)
            data = load_spec_data(spec)
            if spec.train.restart:  # what torch's generator draws from here on (the weights) differs; the data do not
                torch.manual_seed((spec.seed * 1_000_003 + spec.train.restart) % 2 ** 63)
            self._check_data(data)
            self._data, self._generator_after_data = data, torch.get_rng_state()
        return self._data

    def _execute(self, state: dict[str, Any] | None) -> dict[str, Any]:
        data = self.load_data()
        torch.set_rng_state(self._generator_after_data)  # whatever ran between the data and here
        ir = self.ir = self._compile()
        self._images(self.out / "passes" / "before-search", "passes/before-search")

        from dagir.backends.torch_supernet import import_gates_from_module, lower_supernet
        runner = self.runner
        supernet = runner.precision.model(lower_supernet(ir, dtype=runner.dtype).to(self.device))
        self._check_batch_rows(data, supernet)
        self.world.broadcast_module(supernet)  # the same initial weights on every rank
        write_text(self.out / "supernet.py", supernet.code)
        write_text(self.out / "supernet.rewrites.json", json.dumps(getattr(supernet, "rewrites", {}), indent=1))
        stage = state["stage"] if state else "warmup"
        if stage in ("warmup", "search"):
            if state:
                supernet.load_state_dict(state["model"])
            if stage == "warmup":
                stages.warmup(runner, supernet, data, state)
            budget = self._search_budget(supernet)
            stages.search(runner, supernet, data, state if stage == "search" else None,
                          lambda: self._compactness(supernet), budget)
            self.search_budget = budget.summary() if budget is not None else None
            state = None
        else:
            supernet.load_state_dict(state["supernet"])
            self.search_budget = state.get("search_budget")
        searched = effective_gates(import_gates_from_module(supernet, ir), self._final_tau())
        write_text(self.out / "architecture.json", searched.to_json())
        plot_gate_heatmaps(searched, self.out / "gates.png")
        compact_ir = self._post_search(searched)
        self._images(self.out / "passes" / "after-search", "passes/after-search")

        from dagir.backends.torch_compact import lower_compact
        inherited = supernet if self.spec.train.finetune.weights == "searched" else None  # fresh: default init
        compact = runner.precision.model(lower_compact(compact_ir, inherited).to(self.device))
        self.world.broadcast_module(compact)
        served = stages.finetune(runner, compact, supernet, data, state, keep={"search_budget": self.search_budget})
        return self._finish(compact, compact_ir, searched, supernet, data, served)

    def _start(self) -> dict[str, Any] | None:
        out = self.resume_path.parent.parent  # OUT, on every rank
        if self.resume:
            state = load_checkpoint(self.resume_path)
            trained_on = int(state.get("world_size", 1))
            if trained_on != self.world.size:
                raise UserError(f"{out}: this run was trained on {trained_on} process(es), and --resume needs the "
                                f"same: run it again with {trained_on} (torchrun --nproc_per_node={trained_on}), "
                                f"not {self.world.size}; or start again with --overwrite")
            self.runner.history = list(state.get("history", []))
            self.runner.stage_seconds = dict(state.get("stage_seconds", {}))
            self.runner.stage_cpu_seconds = dict(state.get("stage_cpu_seconds", {}))
            self.runner.stage_steps = dict(state.get("stage_steps", {}))
            if state["stage"] == "done":
                raise UserError(f"{out}: this run is already finished (metrics.json holds its results)")
            self.echo(f"resuming from {self.resume_path}: {resume_position(state, self.spec)}")
            return state
        if self.resume_path.exists():
            raise UserError(f"{out}: already holds a run; continue it with --resume, or pass "
                            "--overwrite to start again")
        try:
            self.out.mkdir(parents=True, exist_ok=True)  # OUT, or a rank's scratch folder
            write_text(self.out / "spec.resolved.yaml", self.spec.resolved_yaml())
        except OSError as err:
            raise UserError(f"{out}: cannot write the output folder ({err.strerror or err})") from None
        return None

    def _check_data(self, data) -> None:
        splits = {"training": data.train, "validation": data.val, "test": data.test}
        empty = [name for name, split in splits.items() if len(split) == 0]
        if empty:  # its metrics would be NaN at every epoch
            total = sum(len(split) for split in splits.values())
            raise self.spec.error(("data", "val_split") if empty[0] == "validation" else ("data",),
                                  f"the {empty[0]} split is empty ({total} sample(s) in all): add samples, or change "
                                  "the split fractions (data.val_split, and the data set's test fraction)")
        if data.input_shape != tuple(seed_ir(self.spec).input_node().type.shape):
            raise self.spec.error(("network", "input"), f"the data set's inputs are {list(data.input_shape)}, "
                                  f"not {list(seed_ir(self.spec).input_node().type.shape)}")

    def _check_batch_rows(self, data, supernet: torch.nn.Module) -> None:
        """A batch norm over vectors (an MLP space's NDDR nodes) needs two rows in every training batch
        of every rank; an image's positions count as rows."""
        rows = min(len(data.train), self.spec.data.batch_size) // self.world.size
        if rows < 2 and any(isinstance(norm, torch.nn.BatchNorm1d) for norm in batch_norms(supernet)):
            raise self.spec.error(("data", "batch_size"), f"the network's batch norms need at least 2 rows per batch "
                                  f"and process, and a batch here has {rows}: raise data.batch_size (or use fewer "
                                  "processes), or set network.central.nddr_norm: layer or none")

    def _dumping_into(self, phase: str) -> Callable[[PassResult], None]:
        """Write each pass's IR (JSON and drawings) to OUT/passes/`phase`/NN-name.*."""
        folder = self.out / "passes" / phase
        folder.mkdir(parents=True, exist_ok=True)
        return lambda result: dump_ir(result.ir, folder / f"{result.index:02d}-{result.pass_.name}", draw=True)

    def _compile(self) -> IR:
        return compile_spec(self.spec, on_pass=self._dumping_into("before-search"))

    def _post_search(self, searched: IR) -> IR:
        compact_ir = PassManager(after_search_pipeline(self.spec), on_pass=self._dumping_into("after-search")).run(
            searched)
        write_text(self.out / "compact.json", compact_ir.to_json())
        fit = compact_ir.meta.get("fit_budget")
        if fit and not fit["met"]:
            self.echo(f"warning: search.budget not met: one path per task already costs {fit['cost']['macs']:,} MACs "
                      f"and {fit['cost']['parameters']:,} parameters; the compact network keeps those paths")
        return compact_ir

    def _final_tau(self) -> float:
        """The τ the architecture steps ended with: the stage's fixed `arch_tau`, or the schedule's last."""
        if self.spec.train.search.arch_tau is not None:
            return self.spec.train.search.arch_tau
        t = self.spec.search.gates.temperature
        return temperature(1.0, start=t.start, end=t.end, schedule=t.schedule)

    def _compactness(self, supernet) -> torch.Tensor | None:
        """The squeeze's compactness weight of every gate slot: `flow`'s from the current gates,
        `cost`'s from the edges' ops; None for the kinds that weigh every gate alike."""
        from .training.squeeze import cost_compactness

        kind = self.spec.search.squeeze.kind
        if kind == "flow":
            return self._flow_compactness(supernet)
        if kind == "cost":
            return cost_compactness(self.ir, supernet.gates.slots, len(supernet.gates.entries)).to(
                dtype=self.runner.dtype, device=self.device)
        return None

    def _search_budget(self, supernet) -> SearchBudget | None:
        """The budget held inside the search (`search.budget.search_rate` > 0), or None. Its limits and
        its count of the network are the after-search pipeline's: the passes before `fit-budget` on the
        gates as they are, then what `fit-budget` would measure, against the limits it holds."""
        from dagir.passes.fit_budget import FitBudget

        rate = self.spec.search.budget.search_rate
        if rate <= 0:
            return None
        passes = after_search_pipeline(self.spec)  # built once: its single-task limits compile a spec
        cut = next(index for index, step in enumerate(passes) if step.name == "fit-budget")
        before_fitting, fit = PassManager(passes[:cut], verify_each=False), passes[cut]
        return SearchBudget(self.ir, supernet.gates.slots, {"macs": fit.macs, "parameters": fit.parameters}, rate,
                            lambda: FitBudget.cost(before_fitting.run(self._gates_now(supernet)), fit.untie))

    def _gates_now(self, supernet) -> IR:
        """The IR with the supernet's gates as they are now (at the current τ)."""
        from dagir.backends.torch_supernet import import_gates_from_module

        return effective_gates(import_gates_from_module(supernet, self.ir), supernet.gates.tau)

    def _flow_compactness(self, supernet) -> torch.Tensor:
        """1 - φ_e/Φ for every gate slot, from the current gates (detached)."""
        from .flow import task_flow

        ir = self._gates_now(supernet)
        flows = {t: task_flow(ir, t) for t in ir.task_names}
        names = {edge.name: key for key, edge in ir.edges.items()}
        weights = torch.ones(len(supernet.gates.entries), dtype=self.runner.dtype, device=self.device)
        for (edge, task), slot in supernet.gates.slots.items():
            flow = flows[task]
            share = flow.edge.get(names[edge], 0.0) / flow.total if flow.total > 0 else 0.0
            weights[slot] = 1.0 - share
        return weights

    # -- results ------------------------------------------------------------------------------
    def _finish(self, compact, compact_ir: IR, searched: IR, supernet, data, served=None) -> dict[str, Any]:
        from dagir.backends.torch_export import export_compact
        from dagir.backends.torch_supernet import (count_parameters, gate_parameters, head_parameters,
                                                   weight_parameters)

        from .compact_cost import compact_macs, compact_parameters
        from .ir_stats import count_macs

        runner = self.runner
        test = runner.evaluate(compact, data.test, data, served)
        validation = runner.evaluate(compact, data.val, data, served)  # what a choice (dagir.choice) reads
        export_compact(compact, compact_ir, self.out)
        discretize = compact_ir.meta.get("discretize", {})
        metrics = {
            "name": self.spec.name, "test": test, "validation": validation,
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
            "fit_budget": compact_ir.meta.get("fit_budget"),
            "search_budget": self.search_budget,
            "share_states": {k: v for k, v in compact_ir.meta.get("share_states", {}).items() if k != "states"},
            "stage_seconds": runner.stage_seconds,
            "stage_cpu_seconds": runner.stage_cpu_seconds,
            "stage_steps": runner.stage_steps,
            "selected_epoch": runner.selected,
            "world_size": self.world.size,
            "threads": torch.get_num_threads(),  # torch's CPU threads: runs of one seed round differently on others
        }
        write_text(self.out / "metrics.json", json.dumps(metrics, indent=1))
        write_text(self.out / "history.json", json.dumps(runner.history, indent=1))
        plot_curves(runner.history, self.out / "curves.png")
        if runner.board:
            from .ir_text import format_ir
            board = runner.board
            for name in ("gates", "curves"):
                board.image(f"run/{name}", self.out / f"{name}.png")
            board.text("run/compact_architecture", format_ir(compact_ir))
            board.text("run/spec", self.spec.resolved_yaml())
            for task, values in test.items():
                for metric, value in values.items():
                    board.scalar(f"test/{task}/{metric}", value, len(runner.history))
            for name in ("metrics.json", "compact.json"):
                board.artifact(self.out / name)
        save_checkpoint(self.checkpoint_path, {"stage": "done", "epoch": 0, "step": 0, "history": runner.history,
                                               "stage_seconds": runner.stage_seconds,
                                               "stage_cpu_seconds": runner.stage_cpu_seconds,
                                               "stage_steps": runner.stage_steps, "world_size": self.world.size})
        return metrics
