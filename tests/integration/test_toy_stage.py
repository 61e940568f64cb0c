"""Adding a stage through the public pieces only: the README's "Adding a stage" example, run
as written (a function of the runner's one signature, a new table's schema in
``infra.schemas.SCHEMAS`` and its suite in ``infra.validation.SUITES``, a declaration in
``flows.stages.STAGES``), so the README and this test cannot drift. A real run writes the
table, validated and committed with a fingerprint; a resume recomputes nothing; the catalog
shows it; a function reading config its declaration does not list fails its shard."""

from __future__ import annotations

import ast
import subprocess
import sys

import pyarrow as pa
import pytest

from flows import stages as declared
from flows.pipeline import StageFailed, sphere_run
from flows.stages import Stage
from infra import catalog, schemas, validation
from infra.config import RunConfig
from infra.query import query as run_query
from infra.storage import RunStore
from tasks.code_version import code_version
from tasks.runner import ConfigView, Engines, Read, UndeclaredConfig
from tests.conftest import ROOT

CONFIG = str(ROOT / "configs" / "quickstart.yaml")
OVERRIDES = {"seeds.n": 4, "generation.shard_size": 2, "pool.actors": 1,
             "self_correction.enabled": False, "diversity.enabled": False, "metrics.enabled": False}


def readme_example() -> tuple[Stage, dict, dict]:
    """The README's example: (its declaration, its SCHEMAS entries, its SUITES entries). Its
    function's module is this one (the code version of the toy stage is this file's)."""
    section = (ROOT / "README.md").read_text().split("\n## Adding a stage\n", 1)[1]
    *body, last = ast.parse(section.split("```python\n", 1)[1].split("```", 1)[0]).body
    ns = {"__name__": __name__, "pa": pa, "ConfigView": ConfigView, "Engines": Engines, "from_rows": schemas.from_rows,
          "Stage": Stage, "Read": Read, "SCHEMAS": {}, "SUITES": {}}
    exec(compile(ast.Module(body, type_ignores=[]), "README.md", "exec"), ns)
    return eval(compile(ast.Expression(last.value), "README.md", "eval"), ns), ns["SCHEMAS"], ns["SUITES"]


def peeking(inputs: dict[str, pa.Table], config: ConfigView, engines: Engines) -> dict[str, pa.Table]:
    """Reads ``seed``, which its declaration does not list: its output would not follow a change of it."""
    rows = [{"run_id": engines.run_id, "chain_id": c, "n_steps": config.seed} for c in inputs["chains"].column("chain_id").to_pylist()]
    return {"answer_lengths": schemas.from_rows(rows, "answer_lengths")}


PEEK = Stage("peek", None, fn=peeking, inputs=(Read("chains", "generation", "table"),), reads=("chains",),
             writes=("answer_lengths",), config=("search.step_separator",), after=("lengths",))


def test_the_readme_stage_writes_a_new_table_through_the_public_pieces(prefect_api, ray_local, tmp_path, monkeypatch):
    lengths, new_schemas, new_suites = readme_example()
    assert lengths.name == "lengths" and lengths.writes == ("answer_lengths",) and set(new_schemas) == set(new_suites) == {"answer_lengths"}
    monkeypatch.setattr(declared, "STAGES", (*declared.STAGES, lengths))
    for name in new_schemas:
        monkeypatch.setitem(schemas.SCHEMAS, name, new_schemas[name])
        monkeypatch.setitem(validation.SUITES, name, new_suites[name])
    assert declared.names()[-1] == "lengths" and "lengths" in declared.downstream("generation")

    summary = sphere_run(config_path=CONFIG, run_id="toy", data_root=str(tmp_path), overrides=OVERRIDES)
    store = RunStore(tmp_path, "toy")

    # the rows: one per chain of the run, its steps counted
    chains = store.read_table("chains").to_pylist()
    got = store.read_table("answer_lengths", "lengths").to_pylist()
    assert len(chains) == 8 and summary["counts"]["answer_lengths"] == 8
    assert sorted(got, key=lambda r: r["chain_id"]) == sorted(
        ({"run_id": "toy", "chain_id": c["chain_id"], "n_steps": c["n_steps"]} for c in chains), key=lambda r: r["chain_id"])
    # validated by its suite (one result per expectation, passed) and committed with its fingerprint
    val = [v for v in store.read_table("validation").to_pylist() if v["table"] == "answer_lengths"]
    assert len(val) == 1 and all(v["success"] and v["stage"] == "lengths" and v["element_count"] == 8 for v in val)
    assert "answer_lengths" not in store.read_table("quarantine").column("table").to_pylist()
    marker_path = store.stage_marker_path("lengths", "00000")
    marker = store.stage_marker("lengths", "00000")
    cfg = RunConfig.model_validate(store.load_config())
    assert marker["tables"] == ["answer_lengths"]
    assert marker["fingerprint"]["config"] == lengths.config_hash(cfg) == cfg.stage_hash("search.step_separator", "validation.max_failure_share")
    assert marker["fingerprint"]["code"] == code_version(__name__) and marker["fingerprint"]["inputs"]

    # the catalog: the query sandbox, and the catalog file another DuckDB client opens
    q = run_query(tmp_path, "select count(*) n, sum(n_steps) s from answer_lengths").to_pylist()
    assert q == [{"n": 8, "s": sum(c["n_steps"] for c in chains)}]
    client = ("import duckdb, sys; con = duckdb.connect(sys.argv[1], read_only=True); "
              "print(con.sql('select count(*) from answer_lengths').fetchall()); con.close()")
    other = subprocess.run([sys.executable, "-c", client, str(catalog.catalog_path(tmp_path))], capture_output=True, text=True)
    assert other.stdout.strip() == "[(8,)]", other.stderr

    # a resume recomputes nothing: the stage's marker and its table's marker are untouched
    part_marker = store.marker_path("answer_lengths", "lengths", "00000")
    before = (marker_path.read_text(), part_marker.read_text())
    sphere_run(config_path=CONFIG, run_id="toy", data_root=str(tmp_path), overrides=OVERRIDES)
    assert (marker_path.read_text(), part_marker.read_text()) == before

    # a function reading config its declaration does not list fails its shard, naming the path
    monkeypatch.setattr(declared, "STAGES", (*declared.STAGES, PEEK))
    with pytest.raises(StageFailed, match=r"peek/00000: UndeclaredConfig: stage 'peek' read config 'seed'") as err:
        sphere_run(config_path=CONFIG, run_id="toy", data_root=str(tmp_path), overrides=OVERRIDES)
    assert [type(e) for e in err.value.causes] == [UndeclaredConfig]
    assert store.stage_marker("peek", "00000") is None and not store.committed_parts("answer_lengths", "peek")
    assert (marker_path.read_text(), part_marker.read_text()) == before  # and the README's stage was skipped again
