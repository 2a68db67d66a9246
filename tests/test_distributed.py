"""One run on two processes (gloo on CPU), as torchrun starts it: the same result as one process
with the same global batch, the same decisions on both ranks, rank 0 alone writing OUT, and resume
after an interruption mid-search equal to an uninterrupted 2-process run."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from test_run import TINY, Interrupt, run_quietly

WORLD = 2
# The tiny spec with gate nodes, so it holds no batch norm (the MLP default, NDDR, has one per node):
# each rank's batch norm would normalise its half of the batch, which one process does not.
TINY_WITHOUT_BATCH_NORM = TINY.replace("edge_op: mlp}", "edge_op: mlp, aggregation: gate}")
assert TINY_WITHOUT_BATCH_NORM != TINY


def free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def rank_main(rank: int, port: int, argv: list[str], scratch: str, stop_at: int | None) -> None:
    """One rank, with the environment torchrun gives it. Records the searched decisions it holds in
    `scratch/decisions-rank{rank}.json`; with `stop_at`, is interrupted at that loss call."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), TMPDIR=scratch, OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from dagir import cli, run_job
    from dagir.training import loop, search

    real_post_search = run_job.Run._post_search

    def recording(self, searched):
        Path(scratch, f"decisions-rank{rank}.json").write_text(json.dumps(searched.to_dict()["decisions"]))
        return real_post_search(self, searched)

    run_job.Run._post_search = recording
    if stop_at is not None:
        real_loss, calls = loop.multitask_loss, {"n": 0}

        def flaky(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == stop_at:
                raise Interrupt()
            return real_loss(*args, **kwargs)
        loop.multitask_loss = search.multitask_loss = flaky  # every stage's task loss
    try:
        cli.main(argv)
    except Interrupt:
        pass
    except SystemExit as exit_:
        if exit_.code:
            raise


def run_two(spec: Path, out: Path, scratch: Path, *extra: str, stop_at: int | None = None) -> None:
    scratch.mkdir(parents=True, exist_ok=True)
    argv = ["run", str(spec), "-o", str(out), "--no-progress", "--no-tensorboard", *extra]
    mp.start_processes(rank_main, args=(free_port(), argv, str(scratch), stop_at), nprocs=WORLD, join=True,
                       start_method="spawn")


def one_process_run(spec: Path, folder: Path) -> dict:
    """The 1-process run of `spec` in `folder/one` (trained once per module)."""
    if not (folder / "one" / "metrics.json").exists():
        run_quietly(spec, folder / "one", overrides=["train.device=cpu"])
    return json.loads((folder / "one" / "metrics.json").read_text())


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    spec = folder / "tiny.yaml"
    spec.write_text(TINY_WITHOUT_BATCH_NORM)
    run_two(spec, folder / "two", folder / "scratch")
    return spec, folder


def test_two_processes_train_what_one_does_with_the_same_global_batch(two_process_run):
    spec, folder = two_process_run
    one = one_process_run(spec, folder)
    two = json.loads((folder / "two" / "metrics.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    # The tiny spec has no batch norm: each rank's half-batch gradient, averaged, is the whole
    # batch's up to float32 summation order, so the weights agree to rounding and the metrics exactly.
    weights_one, weights_two = (load_file(folder / name / "compact.safetensors") for name in ("one", "two"))
    assert weights_one.keys() == weights_two.keys()
    assert max(float((weights_one[k] - weights_two[k]).abs().max()) for k in weights_one) < 1e-5
    assert two["test"] == one["test"]


def test_both_ranks_hold_the_same_decisions_and_rank_0_alone_writes(two_process_run):
    _, folder = two_process_run
    scratch = folder / "scratch"
    decisions = [json.loads((scratch / f"decisions-rank{r}.json").read_text()) for r in range(WORLD)]
    assert decisions[0] == decisions[1] and decisions[0]
    assert not [p for p in scratch.iterdir() if p.name.startswith("dagir-rank")]  # rank 1's scratch is gone
    one = sorted(str(p.relative_to(folder / "one")) for p in (folder / "one").rglob("*") if "tensorboard" not in str(p))
    two = sorted(str(p.relative_to(folder / "two")) for p in (folder / "two").rglob("*") if p.name != ".dagir.lock")
    assert two == one


def test_resume_under_two_processes_reaches_the_uninterrupted_result(two_process_run):
    spec, folder = two_process_run
    out = folder / "resumed"
    run_two(spec, out, folder / "scratch-resumed", stop_at=13)  # in search, after its step-3 checkpoint
    state = torch.load(out / "checkpoints" / "latest.pt", weights_only=True)
    assert state["stage"] == "search" and state["world_size"] == 2
    run_two(spec, out, folder / "scratch-resumed", "--resume")
    resumed = json.loads((out / "metrics.json").read_text())
    whole = json.loads((folder / "two" / "metrics.json").read_text())
    assert resumed["test"] == whole["test"]
    assert (json.loads((out / "architecture.json").read_text())["decisions"]
            == json.loads((folder / "two" / "architecture.json").read_text())["decisions"])


def test_resume_under_another_world_size_says_so(two_process_run, tmp_path):
    from test_cli import dagir
    spec, folder = two_process_run
    out = tmp_path / "run"
    run_two(spec, out, tmp_path / "scratch", stop_at=13)
    code, _, stderr = dagir("run", str(spec), "-o", str(out), "--resume", "--no-progress")
    assert code == 2 and "trained on 2 process(es)" in stderr and "torchrun --nproc_per_node=2" in stderr, stderr


def test_torchrun_on_two_nodes_trains_what_one_process_does(two_process_run, tmp_path):
    """`torchrun --nnodes=2 --node_rank=R ... -m dagir run` started twice, as on two machines (here
    both on localhost, one process each, so each rank's LOCAL_RANK is 0): it finishes, rank 0 (node
    0) writes OUT, and the result is the 1-process run's."""
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed beside this Python")
    spec, folder = two_process_run
    port, out = free_port(), tmp_path / "two-nodes"
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    nodes = [subprocess.Popen([torchrun, "--nnodes=2", f"--node_rank={rank}", "--nproc_per_node=1",
                               "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "dagir", "run", str(spec),
                               "-o", str(out), "--no-progress", "--no-tensorboard"],
                              cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for rank in (0, 1)]
    logs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs
    assert f"wrote {out}" in logs[0] and f"wrote {out}" not in logs[1]
    two_nodes = json.loads((out / "metrics.json").read_text())
    assert two_nodes["world_size"] == 2 and two_nodes["test"] == one_process_run(spec, folder)["test"]
