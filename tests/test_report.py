"""`dagir report`: a self-contained page holding every picture it names, rendered in a real browser when one is installed."""
from __future__ import annotations

import base64
import re
import shutil
import subprocess

import pytest
from test_cli import dagir
from test_run import short_tiny_run

IMAGE = re.compile(r"<img alt='([^']*)' src='data:(image/png|image/svg\+xml);base64,([A-Za-z0-9+/=]+)'>")


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    return short_tiny_run(tmp_path_factory.mktemp("run_folder"))


def test_a_run_report_embeds_every_picture_and_the_results(run_folder):
    code, stdout, stderr = dagir("report", str(run_folder))
    assert code == 0, stderr
    page = (run_folder / "report.html").read_text()
    images = IMAGE.findall(page)
    drawings = sorted(p.stem for p in (run_folder / "passes").glob("*/*.svg"))
    assert sorted(alt for alt, _, _ in images if not alt.startswith(("losses", "each task"))) == drawings
    assert len(images) == len(drawings) + 2  # and the curves and the gate heatmaps
    for _, kind, data in images:
        raw = base64.b64decode(data)
        assert raw.startswith(b"\x89PNG") if kind == "image/png" else b"<svg" in raw[:2000]
    import json
    metrics = json.loads((run_folder / "metrics.json").read_text())
    assert f"{metrics['test']['digit']['accuracy']:.4f}" in page
    assert f"{metrics['compact']['parameters']:,}" in page
    assert "Sharing" in page and "http" not in page.replace("http-equiv", "")  # nothing fetched from a server


def test_a_bench_report_shows_the_comparison(tmp_path, run_folder):
    from dagir.bench_job import run_result
    from dagir.bench_table import summarise, write_results
    from dagir.spec import load_spec
    spec = load_spec(run_folder / "spec.resolved.yaml")
    import json
    result = run_result(json.loads((run_folder / "metrics.json").read_text()), spec)
    results = {"searched": {0: result}, "single_task": {0: result}}
    bench = tmp_path / "bench"
    bench.mkdir()
    write_results(bench, spec, summarise(spec, results), results)
    code, _, stderr = dagir("report", str(bench), "-o", str(tmp_path / "bench.html"))
    assert code == 0, stderr
    page = (tmp_path / "bench.html").read_text()
    assert "<th>Δ_MTL %</th>" in page and page.count("<tr><td>searched</td>") == 2
    assert len(IMAGE.findall(page)) == 1  # the comparison plot


def test_report_of_a_folder_that_is_no_run_exits_2(tmp_path):
    code, _, stderr = dagir("report", str(tmp_path))
    assert code == 2 and "neither a finished dagir run" in stderr


def test_a_report_refuses_to_replace_a_run_file_or_to_write_under_a_file(run_folder, tmp_path):
    metrics = (run_folder / "metrics.json").read_bytes()
    code, _, stderr = dagir("report", str(run_folder), "-o", str(run_folder / "metrics.json"))
    assert code == 2 and "would overwrite the run's own metrics.json" in stderr
    assert (run_folder / "metrics.json").read_bytes() == metrics
    (tmp_path / "afile").write_text("x")
    for command in (("report", str(run_folder), "-o", str(tmp_path / "afile" / "r.html")),
                    ("export", str(run_folder), "--format", "python", "-o", str(tmp_path / "afile" / "m.py")),
                    ("viz", str(run_folder / "compact.json"), "-o", str(tmp_path / "afile" / "ir"))):
        code, _, stderr = dagir(*command)
        assert code == 2 and "afile" in stderr and "Traceback" not in stderr, (command, stderr)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no headless browser (Debian's chromium) installed")
def test_the_report_renders_in_a_headless_browser(run_folder, tmp_path):
    dagir("report", str(run_folder))
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1200,1600", f"--screenshot={shot}", (run_folder / "report.html").as_uri()],
                   capture_output=True, timeout=120)
    from matplotlib import image
    pixels = image.imread(str(shot))
    assert pixels.shape[:2] == (1600, 1200)
    assert pixels[..., :3].std() > 0.05  # not a blank page: text, tables and pictures drew
