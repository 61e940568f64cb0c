"""A damaged or incomplete run is named, file by file, with its repair; it never blocks the
other runs; a resume recomputes what was damaged; nothing is exported silently short."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from flows.cli import app
from infra import catalog
from infra.query import query as run_query
from infra.schemas import from_rows
from infra.storage import RunStore
from tests.conftest import ROOT

QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")


def said(res) -> str:
    return " ".join(res.stderr.split())


def finished_run(root, run_id="r", shards=3) -> RunStore:
    """A run that reads as finished: every enabled stage committed, ``shards`` generation and
    routing shards, 5 pairs in each routing shard (no model work: markers and parts written directly)."""
    from flows.pipeline import prepare_run, unfinished_stages

    store = RunStore.at(prepare_run(QUICKSTART, run_id, str(root), {"seeds.n": 4}))
    keys = [f"{k:05d}" for k in range(shards)]
    for sh in keys:
        store.write("problems", "seeds", sh, from_rows([{"run_id": run_id, "problem_id": f"p{sh}", "question": "q"}], "problems"))
        store.mark_stage_done("generation", sh, {}, [])
        pairs = [{"run_id": run_id, "pair_id": f"{sh}-{i}", "prompt": "p", "chosen": "c", "rejected": "r", "stage": "generation"}
                 for i in range(5)]
        store.write("pairs", "routing", sh, from_rows(pairs, "pairs"), commit=f"routing.{sh}")
        store.mark_stage_done("routing", sh, {}, ["pairs"])
    store.write_json("_done/seeds.manifest.json", {"shards": keys})
    for stage in ("seeds", "sft", "step_pairs", "metrics"):
        store.mark_stage_done(stage, "00000", {}, [])
    store.set_status("running")
    store.set_status("finished")
    assert unfinished_stages(str(store.run_dir)) == []
    return store


def export(root, out, *extra):
    return CliRunner().invoke(app, ["export", "r", "--format", "dpo", "--to", str(out), "--data-root", str(root), *extra])


def runs_view(root) -> dict:
    return {r["run_id"]: r for r in run_query(root, "select * from runs").to_pylist()}


def test_a_deleted_table_marker_is_not_exported_silently_and_the_runs_view_names_it(tmp_path):
    root = tmp_path / "data"
    store = finished_run(root)
    assert export(root, tmp_path / "all").exit_code == 0
    assert len((tmp_path / "all" / "dpo.jsonl").read_text().splitlines()) == 15
    gone = store.marker_path("pairs", "routing", "00001")
    gone.unlink()
    res = export(root, tmp_path / "out")
    assert res.exit_code == 2 and "pairs.routing.00001.json is missing" in said(res) and "Traceback" not in res.output
    assert "sphere run --resume r" in said(res) and not (tmp_path / "out").exists()
    row = runs_view(root)["r"]
    assert row["status"] == "incomplete" and "pairs.routing.00001.json is missing" in row["error"] and row["error"].startswith("finished")
    res = export(root, tmp_path / "some", "--allow-incomplete")  # asked for: what is there
    assert res.exit_code == 0 and len((tmp_path / "some" / "dpo.jsonl").read_text().splitlines()) == 10


def _truncate(path):
    path.write_text(path.read_text()[:7])


def _garbage(path):
    path.write_bytes(b"\x00\xffnot json at all")


DAMAGES = {  # file -> (how it is damaged, whether export must refuse)
    "_done/pairs.routing.00001.json": (_truncate, True),
    "_done/stages/routing.00002.json": (_garbage, True),
    "_done/seeds.manifest.json": (_truncate, True),
    "status.json": (lambda p: p.write_text("{\"status\": "), False),
    "config.json": (lambda p: p.write_text("[1, 2]"), True),
}


@pytest.mark.parametrize("name", list(DAMAGES))
def test_a_damaged_record_is_one_message_naming_the_file_and_never_blocks_other_runs(tmp_path, name):
    root = tmp_path / "data"
    finished_run(root, "ok")
    store = finished_run(root, "r")
    damage, refused = DAMAGES[name]
    damage(store.run_dir / name)
    res = export(root, tmp_path / "out")
    if refused:
        assert res.exit_code == 2 and f"{name} is damaged" in said(res) and "Traceback" not in res.output
        assert ("move the run aside" if name == "config.json" else "sphere run --resume r") in said(res)
    else:
        assert res.exit_code == 0
    rows = runs_view(root)
    assert rows["ok"]["status"] == "finished" and rows["r"]["status"] == "damaged" and f"{name} is damaged" in rows["r"]["error"]
    got = run_query(root, "select run_id, count(*) n from pairs group by 1 order by 1").to_pylist()
    assert got[0] == {"run_id": "ok", "n": 15}  # the other run is whole
    res = CliRunner().invoke(app, ["query", "select count(*) from runs", "--data-root", str(root)])
    assert res.exit_code == 0


def test_a_changed_part_is_left_out_of_queries_and_named_in_the_runs_view(tmp_path):
    root = tmp_path / "data"
    finished_run(root, "ok")
    store = finished_run(root, "r")
    part = store.part_path("pairs", "routing", "00000")
    pq.write_table(from_rows([], "pairs"), part)  # changed after its commit
    got = run_query(root, "select run_id, count(*) n from pairs group by 1 order by 1").to_pylist()
    assert got == [{"run_id": "ok", "n": 15}, {"run_id": "r", "n": 10}]
    row = runs_view(root)["r"]
    assert row["status"] == "damaged" and "part-00000.parquet was changed after its commit" in row["error"]
    assert "sphere rerun r --stage routing" in row["error"]
    assert catalog.refresh(root).is_file()


@pytest.mark.parametrize("name", [n for n in DAMAGES if n != "config.json"])
def test_a_resume_sets_damaged_records_aside_and_redoes_their_shards(tmp_path, name):
    from flows.pipeline import prepare_run, unfinished_stages

    root = tmp_path / "data"
    store = finished_run(root)
    DAMAGES[name][0](store.run_dir / name)
    assert not store.is_done("pairs", "routing", "00001") if "00001" in name else True
    prepare_run(None, "r", str(root))  # what `sphere run --resume r` does first
    assert runs_view(root)["r"]["status"] in ("finished", "unknown")  # nothing damaged is left in place...
    kept = list((store.run_dir / "_superseded").glob(f"*-damaged/{name}"))
    assert len(kept) == 1  # ...nor deleted
    if name != "status.json":  # the shard the record belonged to is redone
        assert unfinished_stages(str(store.run_dir)) != []


def test_a_damaged_config_is_one_message_on_resume(tmp_path):
    from infra.storage import DamagedFile

    root = tmp_path / "data"
    store = finished_run(root)
    (store.run_dir / "config.json").write_text("")
    with pytest.raises(DamagedFile, match=r"config\.json is damaged \(empty\).*move the run aside"):
        store.load_config()
    for args in (["run", "--resume", "r"], ["rerun", "r", "--stage", "sft"], ["report", "r"]):
        res = CliRunner().invoke(app, [*args, "--data-root", str(root)])
        assert res.exit_code != 0 and "config.json is damaged" in said(res) and "Traceback" not in res.output, args


def test_markers_read_as_not_done_when_damaged_so_resume_recomputes_them(tmp_path):
    from infra.storage import DamagedFile

    store = finished_run(tmp_path / "data")
    assert store.stage_done("routing", "00001", {})
    _truncate(store.marker_path("pairs", "routing", "00001"))
    assert not store.is_done("pairs", "routing", "00001") and not store.stage_done("routing", "00001", {})
    with pytest.raises(DamagedFile, match=r"pairs\.routing\.00001\.json is damaged \(not valid JSON"):
        store.read_table("pairs")
    _garbage(store.stage_marker_path("routing", "00002"))
    assert not store.stage_done("routing", "00002", {})
    (store.run_dir / "status.json").write_text("nonsense")
    assert store.set_status("running")["status"] == "running"  # a damaged status record is written anew
    json.loads((store.run_dir / "status.json").read_text())


def test_a_new_sharding_moves_the_old_commits_aside_with_their_files(tmp_path):
    from flows import stages as declared
    from flows.runs import prune_stale as _prune
    from infra import integrity

    store = finished_run(tmp_path / "data")  # 3 shards; now resharded to 2
    for stage in ("generation", "routing"):
        _prune(store, declared.get(stage), ["00000", "00001"])
    assert not store.stage_marker_path("routing", "00002").exists() and not store.part_path("pairs", "routing", "00002").exists()
    assert integrity.check(store) == []  # no commit is left pointing at files that were moved
    assert list((store.run_dir / "_superseded").glob("*-stale-routing/_done/stages/routing.00002.json"))


@pytest.mark.parametrize("args, record", [
    (["evolve", QUICKSTART, "--resume", "e1"], "evolve/e1.json"),
    (["sweep", QUICKSTART, "--grid", "search.temperature=0.3", "--resume", "s1"], "sweeps/s1.json"),
])
def test_a_damaged_evolve_or_sweep_record_is_one_message_before_any_work(tmp_path, args, record):
    root = tmp_path / "data"
    (root / record).parent.mkdir(parents=True)
    (root / record).write_text('{"rounds": [')
    res = CliRunner().invoke(app, [*args, "--data-root", str(root)])
    assert res.exit_code == 2 and f"{record} is damaged" in said(res) and "restore it" in said(res), res.output
    assert not (root / "runs").exists()
