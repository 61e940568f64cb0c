"""The writer commands (run, sweep, evolve) share one handling of --set/--n, the config and the
data root (``flows.cli._setup``), and runs, sweeps and evolves one id rule (``flows.run_ids``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import _resume, app
from tests.conftest import ROOT

QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")


def _invoke(command: str, config: str, root: Path, *extra: str):
    """``sphere COMMAND CONFIG ...`` as each command is called (sweep needs a grid)."""
    grid = ["--grid", "search.temperature=0.3,0.8"] if command == "sweep" else []
    return CliRunner().invoke(app, [command, config, *grid, "--data-root", str(root), *extra])


@pytest.mark.parametrize("config, extra, expected", [
    (QUICKSTART, ["--set", "search.candidates"], "--set expects key=value, got 'search.candidates'"),  # a malformed --set
    (QUICKSTART, ["--set", "search.candidates=1"], "search.candidates"),  # a --set the config does not validate with
    (QUICKSTART, ["--n", "0"], "seeds.n"),  # an --n it does not validate with
    ("no-such-config.yaml", [], "config file not found: no-such-config.yaml"),
])
def test_run_sweep_and_evolve_refuse_the_same_bad_options_alike_before_any_work(tmp_path, config, extra, expected):
    said = {}
    for command in ("run", "sweep", "evolve"):
        root = tmp_path / command
        res = _invoke(command, config, root, *extra)
        assert res.exit_code == 2 and expected in res.stderr and "Traceback" not in res.output, (command, res.output)
        assert not root.exists(), command  # nothing written, no lock taken
        said[command] = [line for line in res.stderr.splitlines() if not line.startswith(("Usage: ", "Try "))]  # (they name the command)
    assert said["run"] == said["sweep"] == said["evolve"], said


def test_the_resume_hints_name_the_command_id_and_data_root():
    root = Path("/d")
    assert _resume("run", "r1", root, kept="shards") == "finished shards are kept; resume with: sphere run --resume r1 --data-root /d"
    assert (_resume("sweep c.yaml", "s1", root, kept="runs", tail=" --grid a=1,2")
            == "finished runs are kept; resume with: sphere sweep c.yaml --resume s1 --data-root /d --grid a=1,2")
    assert _resume("evolve c.yaml --rounds 2", "e1", root) == "sphere evolve c.yaml --rounds 2 --resume e1 --data-root /d"


NEW_ID = r"\d{8}-\d{6}-[0-9a-f]{4}"


def test_outside_a_flow_run_runs_sweeps_and_evolves_get_new_ids_of_one_shape(tmp_path):
    from flows import evolve, pipeline, run_ids, sweep

    assert pipeline.new_run_id is run_ids.new_run_id and pipeline._flow_run_bound_id is run_ids.flow_run_bound_id
    assert run_ids.flow_run_bound_id("x") is None
    _, store = pipeline.locate_run(None, None, str(tmp_path), {"name": "t"})
    assert re.fullmatch(rf"t-{NEW_ID}", store.run_id)
    assert re.fullmatch(rf"t-evolve-{NEW_ID}", evolve._evolve_id("t", None)) and evolve._evolve_id("t", "mine") == "mine"
    assert re.fullmatch(rf"t-evolve-{NEW_ID}", evolve.new_evolve_id("t"))
    assert re.fullmatch(rf"t-sweep-{NEW_ID}", sweep.new_sweep_id("t"))


def test_inside_a_flow_run_a_run_and_an_evolve_get_ids_bound_to_it_by_the_same_rule(tmp_path):
    from prefect import flow
    from prefect.runtime import flow_run

    from flows import evolve, pipeline

    def run_id() -> str:
        return pipeline.locate_run(None, None, str(tmp_path), {"name": "t"})[1].run_id

    @flow
    def ids() -> tuple[str, str, str, str]:
        return str(flow_run.get_id()), run_id(), evolve._evolve_id("t", None), run_id()

    fid, first, evolve_id, again = ids()
    bound = fid.replace("-", "")[:12]
    assert first == f"t-fr{bound}" and evolve_id == f"t-evolve-fr{bound}"
    assert again == first  # the same flow run (a retry of it) finds the same run
