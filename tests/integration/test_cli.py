import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from flows.cli import app
from infra import catalog
from infra.schemas import from_rows
from infra.storage import RunStore

runner = CliRunner()


def _commands():
    """Every command the app registers, with its click parameters (no hand-kept list)."""
    import typer.main

    group = typer.main.get_command(app)
    return sorted(group.commands.items())


def test_the_app_registers_the_documented_commands():
    assert {name for name, _ in _commands()} >= {"run", "rerun", "export", "query", "report", "sweep", "server", "check-config"}


@pytest.mark.parametrize("cmd", [name for name, _ in _commands()])
def test_every_command_and_option_has_help_text(cmd):
    res = runner.invoke(app, [cmd, "--help"])
    assert res.exit_code == 0
    command = dict(_commands())[cmd]
    assert (command.help or "").strip(), f"{cmd} has no help text"
    for param in command.params:
        if param.param_type_name == "option" and param.name != "help":
            assert (param.help or "").strip(), f"{cmd} {param.opts} has no help text"
        if param.param_type_name == "argument":
            assert any(param.name in line for line in res.output.splitlines()) or (getattr(param, "help", "") or "").strip()


def test_rerun_offers_every_declared_stage():
    from flows.stages import names

    res = runner.invoke(app, ["rerun", "--help"], terminal_width=400)
    assert all(n in res.output for n in names())


def test_bad_config_stops_before_any_work_with_one_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("search:\n  candidates: 0\n")
    res = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(bad), "--data-root", str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "search.candidates" in res.stderr and str(bad) in res.stderr
    assert not (tmp_path / "d").exists()  # nothing was started


@pytest.fixture
def small_catalog(tmp_path):
    rows = [{"run_id": "r1", "problem_id": f"p{i}", "question": f"q{i}", "gold_answer": str(i)} for i in range(3)]
    RunStore(tmp_path, "r1").write("problems", "seeds", "00000", from_rows(rows, "problems"))
    catalog.refresh(tmp_path)
    return tmp_path


def test_query_formats(small_catalog, tmp_path):
    sql = "select problem_id, gold_answer from problems order by 1"
    res = runner.invoke(app, ["query", sql, "--data-root", str(small_catalog), "--format", "json"])
    assert res.exit_code == 0
    assert [json.loads(line) for line in res.stdout.strip().splitlines()] == [
        {"problem_id": f"p{i}", "gold_answer": str(i)} for i in range(3)
    ]
    res = runner.invoke(app, ["query", sql, "--data-root", str(small_catalog), "--format", "csv"])
    assert res.stdout.splitlines()[0].replace('"', "") == "problem_id,gold_answer"
    out = tmp_path.parent / f"{tmp_path.name}-out.parquet"  # outside the data root (tmp_path): --out never writes inside it
    res = runner.invoke(app, ["query", sql, "--data-root", str(small_catalog), "--format", "parquet", "--out", str(out)])
    import pyarrow.parquet as pq

    assert res.exit_code == 0 and pq.read_table(out).num_rows == 3


def test_query_errors_are_clear(small_catalog, tmp_path):
    res = runner.invoke(app, ["query", "select * from nope", "--data-root", str(small_catalog)])
    assert res.exit_code == 1 and "query failed" in res.stderr
    res = runner.invoke(app, ["query", "select 1", "--data-root", str(tmp_path / "empty")])
    assert res.exit_code == 1 and "sphere run" in res.stderr


def test_report_of_a_run_without_metrics_says_what_to_do(small_catalog):
    RunStore(small_catalog, "r1").save_config({})
    res = runner.invoke(app, ["report", "r1", "--data-root", str(small_catalog)])
    assert res.exit_code == 1 and "has no metrics yet" in res.stderr and "--resume r1" in res.stderr
    res = runner.invoke(app, ["report", "nope", "--data-root", str(small_catalog)])
    assert res.exit_code == 2 and "not found" in res.stderr


def test_sweep_with_a_field_that_is_not_in_the_config_stops_before_any_work(tmp_path):
    res = runner.invoke(app, ["sweep", "configs/quickstart.yaml", "--grid", "search.nope=1,2", "--data-root", str(tmp_path)])
    assert res.exit_code == 2 and "search.nope" in res.stderr
    assert not (tmp_path / "runs").exists()
