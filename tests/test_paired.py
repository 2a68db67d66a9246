"""`benchmarks/paired.py`: two benches' runs scored against one set of single-task networks."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from dagir.spec import load_spec

ROOT = Path(__file__).parent.parent


def write_run(folder: Path, method: str, seed: int, species: float, resolved: str) -> None:
    run = folder / f"{method}-seed{seed}"
    run.mkdir(parents=True)
    (run / "spec.resolved.yaml").write_text(resolved)
    (run / "metrics.json").write_text(json.dumps({
        "test": {"species": {"accuracy": species}, "sex": {"accuracy": 0.8}, "body_mass_g": {"mae": 300.0}},
        "compact": {"parameters": 1000, "macs": {"total": 1000}}, "stage_seconds": {"warmup": 1.0}}))


def paired(*args: str) -> list[str]:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "paired.py"), *args],
                          capture_output=True, text=True, check=True)
    return done.stdout.splitlines()


def test_both_sides_are_scored_against_the_same_single_task_networks(tmp_path):
    resolved = load_spec(ROOT / "examples" / "penguins.yaml").resolved_yaml()
    a, b = tmp_path / "a", tmp_path / "b"
    for seed in (0, 1):
        write_run(a, "single_task", seed, 0.9, resolved)
        write_run(a, "searched", seed, 0.9, resolved)
        write_run(b, "single_task", seed, 0.99, resolved)  # another bench's single-task networks, better ones
        write_run(b, "searched", seed, 0.99 if seed == 0 else 0.9, resolved)
    # against b's single-task networks (the second side's, by default): a's Δ is -0.09/0.99/3 at both seeds,
    # b's is 0 at seed 0 and the same as a's at seed 1
    first = paired(f"x={a}:searched", f"y={b}:searched")
    assert first[0].startswith("y − x over seeds 0–1 (2): +1.52 ± 1.52 standard error, above at 1; "
                               "Δ_MTL x -3.03, y -1.52")
    assert first[1] == "  per seed: +3.03 +0.00"
    assert first[2] == "  x against its own folder's single-task networks: Δ_MTL +0.00"
    # against a's: the same networks, so the same difference per seed in a's units (0.09/0.9/3 = 3.33)
    second = paired(f"x={a}:searched", f"y={b}:searched", "--reference", str(a))
    assert second[1] == "  per seed: +3.33 +0.00"
