"""QDC report, sweeps and the temperature trade-off, on the real tiny backend.

One sweep (T = 0.3 and 1.6 over the same 24 seeds) feeds every test here: the stored
metrics must show the quality-diversity trade-off, the HTML reports must render in
headless Chromium (installed from Debian by `make test`), and the Prefect artifacts of
each run must be readable through the Prefect API.
"""

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from infra.storage import RunStore
from tests.conftest import ROOT

CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage",
                "--disable-extensions", "--no-first-run", "--hide-scrollbars"]


@pytest.fixture(scope="module")
def sweep(prefect_api, ray_local, tmp_path_factory):
    from flows.sweep import sphere_sweep

    root = tmp_path_factory.mktemp("sweep")
    record = sphere_sweep(config_path=str(ROOT / "configs" / "quickstart.yaml"), grid={"search.temperature": [0.3, 1.6]},
                          sweep_id="tsweep", data_root=str(root), overrides={"seeds.n": 24, "seed": 7})
    return root, record


def _metrics(root: Path, run_id: str) -> dict:
    return {(r["stage"], r["table"], r["metric"]): r["value"] for r in RunStore(root, run_id).read_table("metrics").to_pylist()}


def test_raising_temperature_moves_diversity_up_and_quality_down(sweep):
    root, record = sweep
    cold, hot = (_metrics(root, r["run_id"]) for r in record["runs"])
    key = ("generation", "chains")
    assert hot[(*key, "vendi_q1")] > cold[(*key, "vendi_q1")]
    assert hot[(*key, "distinct_2")] > cold[(*key, "distinct_2")]
    assert hot[(*key, "accuracy")] < cold[(*key, "accuracy")]
    # same seeds: both runs worked on the same problems
    problems = [sorted(RunStore(root, r["run_id"]).read_table("problems").column("question").to_pylist()) for r in record["runs"]]
    assert problems[0] == problems[1] and len(problems[0]) == 24


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "headless Chromium is missing: `make test` installs it (apt-get install chromium)"
    return exe


def _render(html: Path, tmp_path: Path) -> tuple[str, Path]:
    exe = _chromium()
    dom = subprocess.run([exe, *CHROME_FLAGS, "--virtual-time-budget=5000", "--dump-dom", html.as_uri()],
                         capture_output=True, text=True, timeout=120)
    png = tmp_path / f"{html.stem}.png"
    subprocess.run([exe, *CHROME_FLAGS, "--window-size=1300,2600", f"--screenshot={png}", html.as_uri()],
                   capture_output=True, timeout=120, cwd=tmp_path)
    return dom.stdout, png


def _ink(png: Path) -> tuple[int, int]:
    import numpy as np
    from PIL import Image

    px = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3).astype(int)
    inked = px[px.min(axis=1) < 200]
    coloured = inked[inked.max(axis=1) - inked.min(axis=1) > 40]  # plot lines/bars are coloured, text is grey
    return len(inked), len({tuple(p) for p in coloured})


def test_run_report_renders_its_plots_in_headless_chromium(sweep, tmp_path):
    root, record = sweep
    run_dir = root / "runs" / record["runs"][0]["run_id"]
    report = run_dir / "report.html"
    assert report.is_file()
    dom, png = _render(report, tmp_path)
    assert "3/3 plots rendered" in dom  # distributions, accuracy by difficulty, routes: each decoded with ink
    ink, colours = _ink(png)
    assert ink > 20_000 and colours > 50


def test_sweep_report_has_the_quality_diversity_plane_and_pareto_front(sweep, tmp_path):
    root, record = sweep
    report = Path(record["report"])
    assert report.parent == root / "sweeps" and json.loads((root / "sweeps" / "tsweep.json").read_text())["runs"] == record["runs"]
    text = report.read_text()
    assert "Quality-diversity plane" in text and "Pareto" in text
    assert all(r["run_id"] in text for r in record["runs"])
    dom, png = _render(report, tmp_path)
    assert "4/4 plots rendered" in dom
    assert _ink(png)[0] > 20_000


def test_pareto_front_keeps_only_undominated_points():
    from tasks.report import pareto_front

    pts = [(1.0, 0.9), (2.0, 0.8), (1.5, 0.7), (3.0, 0.5), (0.5, 0.95), (2.0, 0.6)]
    assert pareto_front(pts) == [4, 0, 1, 3]


def test_each_run_publishes_its_qdc_table_and_report_path(sweep):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    root, record = sweep

    async def read(key):
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

    qdc = asyncio.run(read("sphere-qdc"))
    reports = asyncio.run(read("sphere-report"))
    for r in record["runs"]:
        run_dir = root / "runs" / r["run_id"]
        assert any(str(run_dir / "report.html") in a.data for a in reports)
        assert any(r["run_id"] in (a.description or "") and "accuracy" in str(a.data) for a in qdc)
    assert asyncio.run(read("sphere-sweep-report"))


def test_the_data_view_filters_its_rows_on_a_click_and_highlights_the_first_wrong_step(sweep, tmp_path):
    """Issue 22.1: in headless Chromium, a click on a filter changes the visible rows to exactly
    the matching sample; a pair whose rejected chain has a step judged wrong shows that step
    highlighted; the search box narrows by question text."""
    from tests.browser import Browser

    root, record = sweep
    report = root / "runs" / record["runs"][1]["run_id"] / "report.html"  # T = 1.6: wrong steps to highlight
    with Browser(report.as_uri()) as b:
        data = b.js("JSON.parse(document.getElementById('sphere-data').textContent)")
        cards = "Array.from(document.querySelectorAll('#dv-cards .dv-card'))"
        assert b.js(f"{cards}.length") == len(data) > 0
        assert {r["kind"] for r in data} >= {"pair", "sft", "step pair"}
        stage = next(r["stage"] for r in data if r["kind"] == "pair" and r["stage"] != "generation")
        b.click(f"#dv-filters button[data-field='stage'][data-value='{stage}']")
        shown = b.js(f"{cards}.map(c => c.querySelector('.dv-meta').textContent)")
        want = [r for r in data if r["stage"] == stage]
        assert 0 < len(shown) == len(want) < len(data) and all(f"stage {stage} |" in s for s in shown)
        assert b.js("document.getElementById('dv-count').textContent") == f"{len(want)} of {len(data)} sampled rows shown"
        b.click("#dv-filters button[data-field='stage'][data-value='all']")
        b.click("#dv-filters button[data-field='kind'][data-value='pair']")
        pairs = [r for r in data if r["kind"] == "pair"]
        assert b.js(f"{cards}.length") == len(pairs)
        flagged = [r for r in pairs if r["rejected"] and r["rejected"]["first_wrong"] is not None]
        assert flagged, "no sampled pair has a rejected step judged wrong"
        i = pairs.index(flagged[0])
        marked = b.js(f"{cards}[{i}].querySelectorAll('.dv-col')[1].querySelector('.wrong-step').textContent")
        r = flagged[0]["rejected"]
        assert marked.endswith(r["steps"][r["first_wrong"]]) and r["scores"][r["first_wrong"]] <= 0.25
        word = pairs[0]["question"].split()[0]
        b.js(f"(function(){{var s=document.getElementById('dv-search'); s.value={json.dumps(word.lower())}; "
             "s.dispatchEvent(new Event('input')); return 1;})()")
        assert b.js(f"{cards}.length") == sum(word.lower() in p["question"].lower() for p in pairs)
        b.screenshot(tmp_path / "data-view.png", "#data")
    assert _ink(tmp_path / "data-view.png")[0] > 20_000


def test_the_report_shows_the_settings_that_matter_as_a_table(sweep):
    root, record = sweep
    text = (root / "runs" / record["runs"][0]["run_id"] / "report.html").read_text()
    for cell in ("<th style='text-align:left'>E (candidates per step)</th>", "T (temperature), top-p</th><td style='text-align:left'>0.3",
                 "scorer, reward", "built-in, n=24", "diversity (small) policy"):
        assert cell in text, cell
    assert "settings: {" not in text  # the raw JSON line is gone
