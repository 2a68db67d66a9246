"""`dagir bench` on a tiny spec: every method trains, the table and plot are written, Δ_MTL is right."""
from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from dagir.errors import SpecError
from test_cli import dagir
from test_run import TINY

from dagir.tasks import delta_mtl


def tiny_bench(tmp_path):
    """The tiny spec written out, and the bench folder beside it."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    return spec, tmp_path / "bench"


def test_bench_compares_searched_network_with_baselines(tmp_path):
    spec, out = tiny_bench(tmp_path)
    code, stdout, stderr = dagir("bench", str(spec), "-o", str(out), "--seeds", "2", "--no-progress")
    assert code == 0, stderr
    for name in ("table.md", "table.csv", "results.json", "comparison.png"):
        assert (out / name).is_file()
    rows = list(csv.reader((out / "table.csv").open()))
    assert [r[0] for r in rows[1:]] == ["searched", "mtl_nas", "single_task", "hard_sharing", "cross_stitch"]
    table_rows = {r["method"]: r for r in csv.DictReader((out / "table.csv").open())}
    per_seed = list(csv.DictReader((out / "runs.csv").open()))
    assert len(per_seed) == 10 and {r["seed"] for r in per_seed} == {"3", "4"}
    results = json.loads((out / "results.json").read_text())
    runs, table = results["runs"], results["table"]
    assert table["seeds"] == [3, 4]
    single = runs["single_task"]
    expected = {method: [delta_mtl({t: r["test"][t]["accuracy"] for t in ("digit", "parity")},
                                   {t: single[seed]["test"][t]["accuracy"] for t in ("digit", "parity")},
                                   {"digit": "classification", "parity": "classification"})
                         for seed, r in by_seed.items()] for method, by_seed in runs.items()}
    for method in runs:
        assert abs(table["rows"][method]["delta_mtl"]["mean"] - sum(expected[method]) / 2) < 1e-9
        paired = [mine - theirs for mine, theirs in zip(expected[method], expected["searched"])]
        assert abs(table["rows"][method]["delta_vs_searched"]["mean"] - sum(paired) / 2) < 1e-9
    assert table["rows"]["searched"]["delta_vs_searched"]["mean"] == 0.0
    assert table["rows"]["single_task"]["delta_mtl"]["mean"] == 0.0
    assert table["rows"]["hard_sharing"]["parameters"]["mean"] < table["rows"]["single_task"]["parameters"]["mean"]
    assert "± " in (out / "table.md").read_text()
    for method, row in table_rows.items():  # numbers a program reads as they are
        assert float(row["delta_mtl_mean"]) == pytest.approx(table["rows"][method]["delta_mtl"]["mean"])
        assert float(row["digit_accuracy_std"]) == pytest.approx(table["rows"][method]["digit"]["std"])
        assert int(row["parameters_mean"]) == table["rows"][method]["parameters"]["mean"]
    searched_seeds = [r for r in per_seed if r["method"] == "searched"]
    assert [float(r["digit_accuracy"]) for r in searched_seeds] == [runs["searched"][s]["test"]["digit"]["accuracy"]
                                                                     for s in ("3", "4")]


def test_bench_resume_trains_only_what_is_not_finished(tmp_path):
    spec, out = tiny_bench(tmp_path)
    first = ("bench", str(spec), "-o", str(out), "--methods", "searched,hard_sharing", "--no-progress")
    code, _, stderr = dagir(*first, "--seeds", "1")
    assert code == 0, stderr
    finished = {p: p.stat().st_mtime_ns for p in out.glob("*-seed3/metrics.json")}
    assert len(finished) == 2
    # a seed more: seed 3 is read back, seed 4 trained; the table covers both
    code, stdout, stderr = dagir(*first, "--seeds", "2", "--resume")
    assert code == 0, stderr
    assert stdout.count("not trained again") == 2 and "== searched, seed 4" in stdout
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
    assert json.loads((out / "results.json").read_text())["table"]["seeds"] == [3, 4]
    # another spec in the same folder is refused, and nothing there is touched
    before = (out / "results.json").read_bytes()
    code, _, stderr = dagir(*first, "--seeds", "2", "--resume", "--set", "train.finetune.lr=0.5")
    assert code == 2 and "holds a result of a different spec (train.finetune.lr: " in stderr, stderr
    assert "-> 0.5)" in stderr and "Traceback" not in stderr
    assert (out / "results.json").read_bytes() == before


def test_a_method_of_ones_own_is_a_spec_file(tmp_path):
    spec, out = tiny_bench(tmp_path)
    (tmp_path / "wide_trunk.yaml").write_text(
        "budget: one-stage\nnetwork: {central: {channels: [24, 24]}}\n"
        "pipeline: {before_search: [build-hard-sharing, legalize-types, attach-gates], "
        "after_search: [discretize, share-states]}\n")
    code, stdout, stderr = dagir("bench", str(spec), "-o", str(out), "--methods", "hard_sharing,wide_trunk.yaml",
                                 "--no-progress")
    assert code == 0, stderr
    results = json.loads((out / "results.json").read_text())
    assert list(results["runs"]) == ["hard_sharing", "wide_trunk"]
    wide, narrow = (results["runs"][name]["3"]["parameters"] for name in ("wide_trunk", "hard_sharing"))
    assert wide > narrow
    resolved = (out / "wide_trunk-seed3" / "spec.resolved.yaml").read_text()
    assert "build-hard-sharing" in resolved and "- 24" in resolved
    # every method spends the bench spec's epochs: warm-up + search + fine-tune in one stage
    history = json.loads((out / "wide_trunk-seed3" / "history.json").read_text())
    assert [row["stage"] for row in history] == ["warmup"] * 5


def test_a_method_file_may_extend_a_built_in_one_and_change_only_what_differs(tmp_path):
    from dagir.methods import method_spec
    from dagir.spec import load_spec

    spec = load_spec(tiny_bench(tmp_path)[0])
    (tmp_path / "narrow_mtl_nas.yaml").write_text("extends: mtl_nas\nnetwork: {central: {channels: [4, 4]}}\n"
                                                  "train: {search: {gate_lr: 0.01}}\n")
    built_in, narrow = method_spec(spec, "mtl_nas"), method_spec(spec, str(tmp_path / "narrow_mtl_nas.yaml"))
    assert narrow.network.central.channels == [4, 4] != built_in.network.central.channels
    assert (narrow.train.search.gate_lr, built_in.train.search.gate_lr) == (0.01, 0.05)
    changed = {key for section in ("network", "train", "search", "pipeline")
               for key, value in narrow.resolved_dict()[section].items()
               if value != built_in.resolved_dict()[section][key]}
    assert changed == {"central", "search"}  # the rest is MTL-NAS's: its pipeline, gates, budget of epochs
    assert narrow.train.finetune.epochs == built_in.train.finetune.epochs == 0
    (tmp_path / "bad.yaml").write_text("network: {central: {channels: [4, 4]}}\nextends: mtl_nass\n")
    with pytest.raises(SpecError, match=r"bad.yaml:2:\d+: extends: must name a built-in method .*'mtl_nass'"):
        method_spec(spec, str(tmp_path / "bad.yaml"))


def test_bad_methods_exit_2_before_any_training(tmp_path):
    spec, out = tiny_bench(tmp_path)
    (tmp_path / "cheat.yaml").write_text("data: {batch_size: 8}\n")
    for methods, message in (("searched,magic", "--methods searched,magic: bench.methods.1: unknown method 'magic'"),
                             ("searched,,mtl_nas", "--methods searched,,mtl_nas: an empty name between commas"),
                             ("cheat.yaml", "cheat.yaml:1:1: data: a method may not set 'data'"),
                             ("hard_sharing,hard_sharing", "method 'hard_sharing' is named twice")):
        code, _, stderr = dagir("bench", str(spec), "-o", str(out), "--methods", methods, "--no-progress")
        assert code == 2 and message in stderr and "Traceback" not in stderr, stderr
        assert not out.exists()
    code, _, stderr = dagir("bench", str(spec), "-o", str(out), "--seeds", "0", "--no-progress")
    assert code == 2 and "--seeds: must be at least 1 (got 0)" in stderr and not out.exists(), stderr
    code, _, stderr = dagir("bench", str(spec), "-o", str(out), "--methods", " ", "--no-progress")
    assert code == 2 and "--methods: names no method" in stderr and not out.exists(), stderr


def test_delta_mtl_follows_each_tasks_chosen_metric():
    """A depth task ranked by δ1 (higher is better) counts a rise as a gain, though the kind's
    first metric (absolute error) is lower-is-better."""
    from dagir.bench_table import summarise
    from dagir.spec import Spec

    spec = Spec(data={"dataset": "nyuv2", "root": "."}, tasks=[{"name": "depth", "kind": "depth", "metric": "delta1"}],
                network={"input": {"shape": [3, 8, 8]}})
    budget = {"parameters": 1, "macs": 1, "seconds": 1, "search_seconds": 1, "steps": 1,
              "epochs": {"warmup": 1, "search": 1, "finetune": 1}}
    results = {"single_task": {0: {"test": {"depth": {"delta1": 0.5}}, **budget}},
               "searched": {0: {"test": {"depth": {"delta1": 0.6}}, **budget}}}
    assert summarise(spec, results)["rows"]["searched"]["delta_mtl"]["mean"] == pytest.approx(20.0)


def test_mtnas_and_mmoe_are_bench_methods(tmp_path):
    spec, out = tiny_bench(tmp_path)
    code, _, stderr = dagir("bench", str(spec), "-o", str(out), "--methods", "mtnas,mmoe,single_task", "--no-progress")
    assert code == 0, stderr
    results = json.loads((out / "results.json").read_text())
    assert list(results["runs"]) == ["mtnas", "mmoe", "single_task"]
    mtnas = (out / "mtnas-seed3" / "spec.resolved.yaml").read_text()
    assert "strategy: reinforce" in mtnas and "build-routing" in mtnas
    assert [row["stage"] for row in json.loads((out / "mmoe-seed3" / "history.json").read_text())] == ["warmup"] * 5
    assert "delta_mtl" in results["table"]["rows"]["mtnas"]


def test_ablations_run_as_one_bench_and_the_table_states_each_budget(tmp_path):
    spec, out = tiny_bench(tmp_path)
    code, stdout, stderr = dagir("bench", str(spec), "-o", str(out), "--ablations", "--no-progress",
                                 "--set", "train.search.epochs=1")
    assert code == 0, stderr
    rows = {r["method"]: r for r in csv.DictReader((out / "table.csv").open())}
    assert list(rows) == ["searched", "single_task", "no_read_io", "no_flow_restriction", "no_squeeze",
                          "no_flow_reduction"]
    resolved = {name: yaml.safe_load((out / f"{name}-seed3" / "spec.resolved.yaml").read_text()) for name in rows}
    assert resolved["no_read_io"]["network"]["read_in"] is False and resolved["no_read_io"]["network"]["read_out"] is False
    assert resolved["no_flow_restriction"]["network"]["flow_restriction"]["max_span"] is None
    assert resolved["no_squeeze"]["search"]["squeeze"]["kind"] == "none"
    assert resolved["no_flow_reduction"]["search"]["reduction"]["enabled"] is False
    assert resolved["searched"]["search"]["reduction"]["enabled"] is True
    # the budget: the tiny spec's 2 + 1 + 1 epochs of 4 steps each, for every ablation alike
    assert all((row["epochs_warmup"], row["epochs_search"], row["epochs_finetune"]) == ("2", "1", "1")
               for row in rows.values() if row["method"] != "single_task")
    assert rows["searched"]["steps_mean"] == rows["no_squeeze"]["steps_mean"] == "16"
    assert float(rows["searched"]["search_seconds_mean"]) <= float(rows["searched"]["seconds_mean"])
    assert 0 < float(rows["searched"]["search_cpu_seconds_mean"])
    runs = list(csv.DictReader((out / "runs.csv").open()))
    assert all(float(run["search_cpu_seconds"]) > 0 for run in runs)
    assert "| 2+1+1 | 16 |" in (out / "table.md").read_text()
    assert "Budget: every method trains on the same data and seeds" in (out / "table.md").read_text()
    assert "last-stage learning-rate schedule (cosine)" in (out / "table.md").read_text()


def test_every_lever_file_is_a_method_with_one_switch(tmp_path):
    from pathlib import Path

    from dagir.bench_job import resolve_methods
    from dagir.spec import load_spec

    spec, _ = tiny_bench(tmp_path)
    levers = sorted((Path(__file__).parent.parent / "examples" / "levers").glob("*.yaml"))
    assert len(levers) >= 6
    switched: dict[str, list[list[str]]] = {}
    # a lever switches one thing from the tiny spec or from an example spec (they differ: the example
    # specs budget their compact network and anneal only their last stage, for instance)
    for base in (load_spec(spec), load_spec(Path(__file__).parent.parent / "examples" / "mmoe_synthetic.yaml")):
        for name, method in resolve_methods(base, [str(path) for path in levers]).items():
            switched.setdefault(name, []).append(
                [f"{section}.{key}" for section in ("train", "search", "network", "pipeline")
                 for key, value in method.resolved_dict()[section].items()
                 if value != base.resolved_dict()[section][key]])
    for name, changes in switched.items():
        assert all(len(changed) <= 1 for changed in changes) and any(changes), (name, changes)


def bench_elsewhere_gives_the_same_table(tmp_path: Path, *how: str, says: str, worker_threads: int) -> None:
    """A tiny 2-seed bench run one after another and run as `how` (each run on `worker_threads`
    torch threads) writes the same results, given the same threads."""
    spec, out = tiny_bench(tmp_path)
    common = ("bench", str(spec), "--methods", "searched,hard_sharing", "--seeds", "2", "--no-progress",
              "--set", "train.search.epochs=1")
    threads = torch.get_num_threads()
    torch.set_num_threads(worker_threads)  # a run rounds differently on another number of threads
    try:
        code, _, stderr = dagir(*common, "-o", str(tmp_path / "one"))
    finally:
        torch.set_num_threads(threads)
    assert code == 0, stderr
    code, stdout, stderr = dagir(*common, "-o", str(tmp_path / "pool"), *how)
    assert code == 0, stderr
    assert says in stdout
    one, pool = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("one", "pool"))
    for method in ("searched", "hard_sharing"):
        for seed in ("3", "4"):
            for task in ("digit", "parity"):
                assert pool["runs"][method][seed]["test"][task]["accuracy"] == pytest.approx(
                    one["runs"][method][seed]["test"][task]["accuracy"], rel=1e-5)
            assert pool["runs"][method][seed]["parameters"] == one["runs"][method][seed]["parameters"]
    assert list(pool["runs"]["searched"]) == ["3", "4"]  # in seed order, whatever order they finished in
    ran_on = {json.loads(path.read_text())["threads"] for path in (tmp_path / "pool").rglob("metrics.json")}
    assert ran_on == {worker_threads}


def test_a_bench_over_worker_processes_gives_the_same_table(tmp_path):
    bench_elsewhere_gives_the_same_table(tmp_path, "--workers", "2", says="queued on 2 workers",
                                         worker_threads=max(1, (os.cpu_count() or 1) // 2))


def test_a_bench_on_ray_gives_the_same_table(tmp_path):
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'dagir[ray]'")
    bench_elsewhere_gives_the_same_table(tmp_path, "--executor", "ray", "--cpus-per-run", "1", says="queued on Ray",
                                         worker_threads=1)


def test_ray_without_ray_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    spec, out = tiny_bench(tmp_path)
    code, _, stderr = dagir("bench", str(spec), "-o", str(out), "--executor", "ray", "--no-progress")
    assert code == 2 and "pip install 'dagir[ray]'" in stderr and not out.exists(), stderr
    code, _, stderr = dagir("bench", str(spec), "-o", str(out), "--executor", "slurm", "--no-progress")
    assert code == 2 and "--executor: 'slurm' is not one of local, ray" in stderr


def test_a_budget_is_the_searched_networks_and_baselines_run_without_it(tmp_path):
    """A bench spec's `search.budget` stays on the methods that fit it (the searched network, the
    ablations) and is dropped from those with no fit-budget pass, which would refuse it."""
    from dagir.methods import method_spec
    from dagir.spec import load_spec

    spec = load_spec(Path(__file__).parent.parent / "examples" / "penguins.yaml",
                     ["search.budget.macs=single_task", "search.budget.parameters=9000"])
    for method in ("searched", "no_squeeze"):
        budget = method_spec(spec, method).search.budget
        assert (budget.macs, budget.parameters) == ("single_task", 9000)
    for method in ("hard_sharing", "single_task", "mtl_nas", "mtnas", "mmoe", "cross_stitch"):
        budget = method_spec(spec, method).search.budget
        assert (budget.macs, budget.parameters) == (None, None), method


def test_a_single_task_budget_prices_the_bench_specs_single_task_networks_whatever_a_method_widens(tmp_path):
    """A method that changes the layers keeps the bench spec's `single_task` budget in numbers (not
    its own single-task networks' cost, which is another); one that does not keeps `single_task`."""
    from dagir.methods import method_spec
    from dagir.pipeline import single_task_cost
    from dagir.spec import load_spec

    spec = load_spec(Path(__file__).parent.parent / "examples" / "penguins.yaml")
    assert (spec.search.budget.macs, spec.search.budget.parameters) == ("single_task", "single_task")
    narrower = tmp_path / "narrower.yaml"
    narrower.write_text("network: {stem: {channels: 16}, central: {channels: 16}}\n")
    narrow = method_spec(spec, str(narrower))
    bench_cost, own_cost = single_task_cost(spec), single_task_cost(method_spec(spec, "single_task"))
    narrow_single = single_task_cost(load_spec(Path(__file__).parent.parent / "examples" / "penguins.yaml",
                                               ["network.stem.channels=16", "network.central.channels=16"]))
    assert narrow_single["parameters"] < bench_cost["parameters"] == own_cost["parameters"]
    assert (narrow.search.budget.macs, narrow.search.budget.parameters) == (bench_cost["macs"],
                                                                            bench_cost["parameters"])
    lever = Path(__file__).parent.parent / "examples" / "levers" / "squeeze_rho_4.yaml"
    assert method_spec(spec, str(lever)).search.budget.parameters == "single_task"


def test_every_methods_training_ends_with_the_bench_specs_learning_rate_schedule(tmp_path):
    """Where the bench spec anneals its fine-tune (by default), each method anneals the stage it ends
    with (a one-stage baseline its warm-up, MTL-NAS its search), unless the method sets that stage's
    own schedule; where it does not anneal, no method does."""
    from dagir.methods import method_spec
    from dagir.spec import load_spec

    penguins = Path(__file__).parent.parent / "examples" / "penguins.yaml"
    annealed = load_spec(penguins)
    ends = {"searched": "finetune", "no_squeeze": "finetune", "mtnas": "finetune", "mtl_nas": "search",
            "single_task": "warmup", "hard_sharing": "warmup", "cross_stitch": "warmup", "mmoe": "warmup"}
    for method, last in ends.items():
        train = method_spec(annealed, method).train
        assert train.final_stage() == last, method
        assert getattr(train, last).lr_schedule == "cosine", method
        assert method == "searched" or train.warmup.lr_schedule == ("cosine" if last == "warmup" else "constant")
    plain = load_spec(penguins, ["train.finetune.lr_schedule=constant"])
    for method in ends:
        train = method_spec(plain, method).train
        assert {getattr(train, stage).lr_schedule for stage in ("warmup", "search", "finetune")} == {"constant"}
    own = tmp_path / "constant_single.yaml"  # a method that says how its one stage runs keeps it
    own.write_text("budget: one-stage\ntrain: {warmup: {lr_schedule: constant}}\n"
                   "pipeline: {before_search: [build-single-task, legalize-types, attach-gates], "
                   "after_search: [discretize, share-states]}\n")
    assert method_spec(annealed, str(own)).train.warmup.lr_schedule == "constant"


def test_resume_takes_up_a_run_whose_spec_differs_only_in_a_stage_that_does_not_train():
    """A single-task run trains one stage; the settings of its empty search and fine-tune do not
    make it another run, so a bench that anneals the fine-tune can take it up. Its own stage's can."""
    from dagir.methods import method_spec
    from dagir.run_folder import spec_changes
    from dagir.spec import load_spec

    penguins = Path(__file__).parent.parent / "examples" / "penguins.yaml"
    plain = method_spec(load_spec(penguins, ["train.finetune.lr_schedule=constant"]), "single_task")
    recorded = plain.resolved_dict()  # a run that annealed its one stage, the fine-tune's settings left as they were
    recorded["train"]["warmup"]["lr_schedule"] = "cosine"
    assert recorded["train"]["finetune"]["epochs"] == 0 and recorded["train"]["finetune"]["lr_schedule"] == "constant"
    annealed = method_spec(load_spec(penguins), "single_task")
    assert annealed.train.finetune.lr_schedule == "cosine" and spec_changes(recorded, annealed) == {}
    assert spec_changes(recorded, plain) == {"train.warmup.lr_schedule": ("cosine", "constant")}
    searched = load_spec(penguins, ["train.finetune.lr_schedule=constant"])  # it trains every stage: each one's settings count
    changed = load_spec(penguins)
    assert spec_changes(searched.resolved_dict(), changed) == {"train.finetune.lr_schedule": ("constant", "cosine")}


class Ref:
    def __init__(self, value):
        self.value = value


class RayOnOtherDisks:
    """A stand-in for Ray whose tasks run here, one at a time, but on nodes that do not share the
    driver's disk: a task's run folder is gone (it stayed on its node) by the time the driver gets
    the task's result."""

    class exceptions:
        class RayTaskError(Exception):
            pass

    def __init__(self):
        self.ran = []

    def is_initialized(self):
        return True

    def remote(self, **resources):
        def wrap(function):
            class Remote:
                @staticmethod
                def remote(spec, folder, *args):
                    result = function(spec, folder, *args)
                    shutil.rmtree(folder)
                    self.ran.append(folder.name)
                    return Ref(result)
            return Remote
        return wrap

    def wait(self, refs, num_returns):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        return ref.value


def test_a_bench_on_ray_nodes_without_a_shared_disk_still_holds_every_run(tmp_path, monkeypatch):
    """Each Ray task sends its finished run folder back: OUT ends up with every run, and --resume
    then trains nothing again."""
    ray = RayOnOtherDisks()
    monkeypatch.setitem(sys.modules, "ray", ray)
    spec, out = tiny_bench(tmp_path)
    common = ("bench", str(spec), "-o", str(out), "--methods", "searched,single_task", "--seeds", "1",
              "--no-progress", "--set", "train.search.epochs=1")
    code, stdout, stderr = dagir(*common, "--executor", "ray")
    assert code == 0, stderr
    assert sorted(ray.ran) == ["searched-seed3", "single_task-seed3"]
    assert "files copied back" in stdout
    for run in ray.ran:
        assert (out / run / "metrics.json").is_file() and (out / run / "spec.resolved.yaml").is_file()
        assert not (out / run / "checkpoints").exists()  # a finished run does not need them
    code, stdout, stderr = dagir(*common, "--resume")
    assert code == 0, stderr
    assert stdout.count("not trained again") == 2


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (ended, not yet reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the workers through /proc")
def test_the_workers_of_a_killed_bench_stop(tmp_path):
    """A bench killed outright (SIGKILL: no clean-up runs) leaves no worker training on."""
    import os
    import signal
    import subprocess
    import time

    spec, out = tiny_bench(tmp_path)
    bench = subprocess.Popen([sys.executable, "-m", "dagir", "bench", str(spec), "-o", str(out), "--workers", "2",
                              "--methods", "searched,hard_sharing", "--no-progress", "--set", "train.warmup.epochs=400"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(workers := children_of(bench.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # the workers import torch and start their runs
    workers = children_of(bench.pid)
    assert len(workers) >= 2, "the bench started no workers"
    os.kill(bench.pid, signal.SIGKILL)
    bench.wait()
    deadline = time.monotonic() + 20
    while (alive := [pid for pid in workers if running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    names = {pid: Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:120] for pid in alive}
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"workers {names} trained on after their bench was killed"


METHOD_FILES = {  # each of examples/methods/ and the example spec it is written for
    "mtnas_staged.yaml": "multimnist.yaml", "mtl_nas_matched_multimnist.yaml": "multimnist.yaml",
    "mtl_nas_matched_tabular.yaml": "mmoe_synthetic.yaml", "mtl_nas_matched_sum.yaml": "mmoe_synthetic.yaml",
    "mtl_nas_matched_frozen.yaml": "mmoe_synthetic.yaml", "mtl_nas_matched_small_tables.yaml": "penguins.yaml",
    "mtl_nas_matched_small_tables_frozen.yaml": "penguins.yaml",
    "mtl_nas_matched_multimnist_frozen.yaml": "multimnist.yaml",
    "mtl_nas_matched_digits_images.yaml": "digits_images.yaml", "mtl_nas_matched_digits_images_frozen.yaml": "digits_images.yaml"}


def test_every_example_method_file_resolves_on_the_spec_it_is_written_for():
    from dagir.bench_job import resolve_methods
    from dagir.spec import load_spec

    examples = Path(__file__).parent.parent / "examples"
    files = sorted((examples / "methods").rglob("*.yaml"))
    assert sorted(path.name for path in files) == sorted(METHOD_FILES)
    for path in files:
        method = resolve_methods(load_spec(examples / METHOD_FILES[path.name]), [str(path)])[path.stem]
        assert method.pipeline.before_search[0].startswith(("build-cross-task", "build-routing")), path.name


def test_a_bench_does_not_overwrite_what_a_folder_holds_unless_told(tmp_path):
    """Into a folder with a bench's results the bench refuses without --resume or --overwrite (it
    replaced them silently); it refuses a run's folder; a run and a compile refuse a bench's folder."""
    spec, out = tiny_bench(tmp_path)
    assert dagir("bench", str(spec), "-o", str(out), "--methods", "hard_sharing", "--no-progress")[0] == 0
    results = (out / "results.json").read_bytes()
    code, _, stderr = dagir("bench", str(spec), "-o", str(out), "--methods", "single_task", "--no-progress")
    assert code == 2 and "holds a bench's runs or results" in stderr and "--overwrite" in stderr, stderr
    assert (out / "results.json").read_bytes() == results and not list(out.glob("single_task-seed*"))
    code, _, stderr = dagir("bench", str(spec), "-o", str(out), "--methods", "single_task", "--overwrite",
                            "--no-progress")
    assert code == 0 and json.loads((out / "results.json").read_text())["runs"].keys() == {"single_task"}, stderr
    code, _, stderr = dagir("bench", str(spec), "-o", str(next(out.glob("hard_sharing-seed*"))), "--no-progress")
    assert code == 2 and "holds a dagir run" in stderr
    for command in (("run", str(spec), "-o", str(out), "--no-progress"), ("compile", str(spec), "-o", str(out))):
        code, _, stderr = dagir(*command)
        assert code == 2 and "holds a bench's results" in stderr and "Traceback" not in stderr, stderr
