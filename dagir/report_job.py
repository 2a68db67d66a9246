"""`dagir report OUT`: one self-contained HTML page of a run (or a bench), viewable offline.

A run's page: the test metrics, the compact network's size (parameters, MACs per sample, edges per
task) and its sharing (which tasks share each node's state), the curves, the gate heatmaps, every
pass's drawing, the compact architecture as text and the spec. A bench's page: the comparison
table and plot, the budget note, and a line per run. Every picture is embedded (PNG as base64,
SVG inline as an image), so the file can be mailed or opened from disk with no server.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from .errors import UserError
from .run_folder import output_file, refuse_a_run_file, unfinished, write_text

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; } td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.4em 0; } figure { margin: 0.8em 0; }
figcaption { font-size: 0.85em; color: #555; } pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; }
.passes figure { margin: 1.2em 0; }
"""


def write_report(out: Path, target: Path | None = None) -> Path:
    """Write the page for the run or bench folder `out` (default `OUT/report.html`); return its path."""
    out = Path(out)
    if (out / "results.json").is_file():
        body = _bench_page(out)
    elif (out / "metrics.json").is_file():
        body = _run_page(out)
    else:
        raise UserError(f"{out}: neither a finished dagir run (metrics.json) nor a bench (results.json)"
                        f"{unfinished(out)}")
    target = output_file(target) if target is not None else out / "report.html"
    refuse_a_run_file(target, out, allowed=("report.html",))
    title = html.escape(out.name)
    write_text(target, f"<!doctype html>\n<html><head><meta charset='utf-8'><title>dagir: {title}</title>"
                       f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")
    return target


def figure(path: Path, caption: str) -> str:
    """An embedded picture, or nothing when the file is missing."""
    if not path.is_file():
        return ""
    kind = {".png": "image/png", ".svg": "image/svg+xml"}[path.suffix]
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f"<figure><img alt='{html.escape(caption)}' src='data:{kind};base64,{data}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"<td class='num'>{value:.4f}</td>"
        if isinstance(value, int):
            return f"<td class='num'>{value:,}</td>"
        return f"<td>{html.escape(str(value))}</td>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    return f"<table><tr>{head}</tr>" + "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows) + "</table>"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not readable as JSON ({error})") from None


def _run_page(out: Path) -> str:
    metrics = _read_json(out / "metrics.json")
    parts = [f"<h1>{html.escape(str(metrics.get('name', out.name)))}</h1><p>run folder <code>{html.escape(str(out))}</code></p>"]
    try:
        test = metrics["test"]
        compact = metrics["compact"]
        rows = [[task, metric, float(value)] for task, values in test.items() for metric, value in values.items()]
        parts.append("<h2>Test metrics of the compact network</h2>" + table(["task", "metric", "value"], rows))
        size = [["parameters", int(compact["parameters"])], ["MACs per sample", int(compact["macs"]["total"])],
                ["MACs, tasks run separately", int(compact["macs"]["separate_total"])]]
        size += [[f"edges kept for {task}", int(n)] for task, n in compact["edges_per_task"].items()]
        parts.append("<h2>Compact network</h2>" + table(["quantity", "value"], size))
    except (KeyError, TypeError, AttributeError):
        raise UserError(f"{out / 'metrics.json'}: not a dagir metrics file") from None
    parts.append(_sharing(out))
    parts.append("<h2>Training</h2>" + figure(out / "curves.png", "losses and validation metrics per epoch")
                 + figure(out / "gates.png", "each task's gates after the search"))
    for stage in ("before-search", "after-search"):
        drawings = sorted((out / "passes" / stage).glob("*.svg"))
        if drawings:
            parts.append(f"<h2>Passes {stage}</h2><div class='passes'>"
                         + "".join(figure(p, p.stem) for p in drawings) + "</div>")
    if (out / "compact.json").is_file():
        from .ir_io import read_ir
        from .ir_text import format_ir
        parts.append(f"<h2>Compact architecture</h2><pre>{html.escape(format_ir(read_ir(out / 'compact.json')))}</pre>")
    if (out / "spec.resolved.yaml").is_file():
        parts.append(f"<h2>Spec</h2><pre>{html.escape((out / 'spec.resolved.yaml').read_text())}</pre>")
    return "\n".join(parts)


def _sharing(out: Path) -> str:
    """Which tasks share each node's state in the compact network."""
    if not (out / "compact.json").is_file():
        return ""
    from .ir_io import read_ir
    groups = read_ir(out / "compact.json").meta.get("share_states", {}).get("states", {})
    rows = [[node, " | ".join(", ".join(group) for group in states)] for node, states in groups.items()]
    return ("<h2>Sharing</h2><p>At each node, the tasks in one group compute the same state once.</p>"
            + table(["node", "states (tasks sharing each)"], rows))


def _seconds(stat: dict[str, float] | None) -> str:
    """Seconds as the table shows them; n/a where the run did not record them."""
    mean = float("nan") if stat is None else float(stat["mean"])
    return "n/a" if mean != mean else f"{mean:.0f}"


def _bench_page(out: Path) -> str:
    results = _read_json(out / "results.json")
    try:
        summary, runs = results["table"], results["runs"]
        metric_of, rows = summary["metrics"], summary["rows"]
        header = ["method"] + [f"{t} {m}" for t, m in metric_of.items()] + ["Δ_MTL %", "parameters", "MACs",
                                                                              "warm-up + search s", "train s"]
        lines = [[method] + [f"{row[t]['mean']:.4f} ± {row[t]['std']:.4f}" for t in metric_of]
                 + [f"{row['delta_mtl']['mean']:.2f} ± {row['delta_mtl']['std']:.2f}" if "delta_mtl" in row else "n/a",
                    int(row["parameters"]["mean"]), int(row["macs"]["mean"]),
                    _seconds(row.get("search_seconds")), _seconds(row["seconds"])]
                 for method, row in rows.items()]
    except (KeyError, TypeError, AttributeError):
        raise UserError(f"{out / 'results.json'}: not a dagir bench result") from None
    seeds = ", ".join(str(s) for s in summary.get("seeds", []))
    parts = [f"<h1>Bench {html.escape(out.name)}</h1><p>seeds {html.escape(seeds)}; every method on the same data, "
             "budget and seeds (mean ± std over seeds)</p>", "<h2>Comparison</h2>" + table(header, lines),
             figure(out / "comparison.png", "each task's metric, parameters and Δ_MTL per method")]
    per_run = [[method, str(seed), *(float(run["test"][t][m]) for t, m in metric_of.items()), int(run["parameters"])]
               for method, by_seed in runs.items() for seed, run in by_seed.items()]
    parts.append("<h2>Runs</h2>" + table(["method", "seed", *(f"{t} {m}" for t, m in metric_of.items()), "parameters"],
                                         per_run))
    return "\n".join(parts)
