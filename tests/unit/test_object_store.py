"""Object-store data roots (``infra.fs``) against a real S3 API server (moto's, on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pytest

from infra.catalog import CatalogError
from infra.config import ConfigError, load_config
from infra.fs import StoreError, StorePath, as_path, localize, snapshot, upload_dir
from infra.locks import run_lock
from infra.query import query
from infra.schemas import SCHEMAS
from infra.storage import PartCorrupt, RunStore
from tests.conftest import ROOT
from tests.support.s3 import S3Server, restore, use_in_process


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = S3Server(log_dir=tmp_path_factory.mktemp("moto"))
    old = use_in_process(server)
    os.environ["SPHERE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield server
    os.environ.pop("SPHERE_CACHE", None)
    restore(old)
    server.stop()


def test_a_store_path_answers_the_pathlib_subset_against_the_server(s3):
    root = as_path(s3.uri("paths"))
    assert isinstance(root, StorePath) and str(root) == s3.uri("paths") and not root.exists()
    (root / "runs" / "r1" / "a" / "x.json").write_text('{"a": 1}')
    (root / "runs" / "r1" / "a" / "y.parquet").write_bytes(b"PAR1")
    (root / "runs" / "r2" / "b.json").write_text("{}")
    run = root / "runs" / "r1"
    assert run.is_dir() and (run / "a" / "x.json").is_file() and not (run / "a").is_file()
    assert json.loads((run / "a" / "x.json").read_text()) == {"a": 1} and (run / "a" / "y.parquet").stat().st_size == 4
    assert sorted(p.name for p in (root / "runs").iterdir()) == ["r1", "r2"]
    assert [p.name for p in (root / "runs").glob("*/a/*.json")] == ["x.json"]
    assert sorted(p.name for p in root.rglob("*.json")) == ["b.json", "x.json"]
    assert (run / "a" / "x.json").relative_to(root) .as_posix() == "runs/r1/a/x.json"
    assert (run / "a" / "x.json").parents[2] == root / "runs" and (run / "a" / "x.json").with_name("z").name == "z"
    moved = (run / "a").rename(run / "_superseded" / "a")  # a folder is its keys: all move
    assert not (run / "a").exists() and sorted(p.name for p in moved.iterdir()) == ["x.json", "y.parquet"]
    with pytest.raises(FileNotFoundError):
        (run / "a" / "x.json").read_text()
    (root / "runs" / "r2").rmtree()
    assert not (root / "runs" / "r2").exists()


@pytest.mark.parametrize("uri, why", [("s3://AKIAXX:verysecret@bucket/x", "credentials"),
                                      ("s3://bucket/x?access_key=AKIAXX", "options"), ("s3:///x", "no bucket")])
def test_a_data_root_uri_with_credentials_or_options_is_refused_naming_why(uri, why, tmp_path):
    with pytest.raises(StoreError, match=why):
        as_path(uri)
    with pytest.raises(ConfigError, match=f"data_root .* {why}") as e:
        load_config(ROOT / "configs" / "quickstart.yaml", {"data_root": uri})
    assert "verysecret" not in str(e.value) and "AKIAXX" not in str(e.value)
    res = subprocess.run([sys.executable, "-m", "flows.cli", "query", "select 1", "--data-root", uri], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "300"})
    out = res.stdout + res.stderr
    assert res.returncode == 2 and why in out and "Traceback" not in out and len(out.strip().splitlines()) == 1, out
    assert "verysecret" not in out and "AKIAXX" not in out  # the message never repeats a secret


def test_the_writer_cache_follows_a_supersede_and_a_rewrite_of_the_same_shard(s3):
    """Found by the object-store rerun: a rename looked the key up again before moving it, so the
    writer's cache said the moved stage marker was still there and the recompute failed."""
    store = RunStore(as_path(s3.uri("cache")), "r1")
    with run_lock(store.run_dir):
        store.save_config({"name": "x"})
        store.write("x", "div", "00000", pa.table({"a": [1]}), commit="div.00000")
        store.mark_stage_done("div", "00000", {"f": 1}, ["x"])
        assert store.stage_done("div", "00000")
        store.supersede(store.stage_outputs("div", ("x",), ()), "rerun")
        assert not store.stage_done("div", "00000") and store.marker("x", "div", "00000") is None
        store.unmark_stage("div", "00000")
        store.write("x", "div", "00000", pa.table({"a": [2]}), commit="div.00000")
        store.mark_stage_done("div", "00000", {"f": 2}, ["x"])
        assert store.stage_done("div", "00000", {"f": 2}) and store.read_part("x", "div", "00000").to_pylist() == [{"a": 2}]
    # a fresh reader (no cache) sees the same
    again = RunStore(as_path(s3.uri("cache")), "r1")
    assert again.read_part("x", "div", "00000").to_pylist() == [{"a": 2}] and again.stage_done("div", "00000", {"f": 2})


def _committed_run(s3, prefix: str) -> RunStore:
    store = RunStore(as_path(s3.uri(prefix)), "r1")
    with run_lock(store.run_dir):
        store.save_config({"name": "x"})
        store.set_status("finished")
        rows = pa.Table.from_pylist([{"run_id": "r1", "problem_id": p} for p in ("p1", "p2")], SCHEMAS["sft"])
        store.write("sft", "sft", "00000", rows, commit="sft.00000")
        store.mark_stage_done("sft", "00000", {"f": 1}, ["sft"])
        # a part written by a shard that was killed before its marker: on the store, never committed
        (store.run_dir / "sft" / "sft" / "part-00001.parquet").write_bytes(
            (store.run_dir / "sft" / "sft" / "part-00000.parquet").read_bytes())
    return store


def test_query_over_a_store_root_reads_committed_parts_only_and_nothing_outside(s3):
    store = _committed_run(s3, "query")
    root = str(store.data_root)
    assert query(root, "select count(*) as n from sft").column("n").to_pylist() == [2]  # not 4: the stray part is not committed
    assert query(root, "select status from runs").column("status").to_pylist() == ["finished"]
    for hostile in (f"select * from read_parquet('{store.run_dir}/sft/sft/part-00001.parquet')",
                    f"select * from read_parquet('{s3.endpoint}/{s3.bucket}/query/runs/r1/sft/sft/part-00001.parquet')"):
        with pytest.raises(CatalogError):
            query(root, hostile)


def test_a_part_changed_on_the_store_after_its_commit_is_named_and_not_read(s3, tmp_path, monkeypatch):
    store = _committed_run(s3, "corrupt")
    part = store.part_path("sft", "sft", "00000")
    part.write_bytes(part.read_bytes()[:-3] + b"xyz")  # same size, other bytes
    monkeypatch.setenv("SPHERE_CACHE", str(tmp_path / "fresh-cache"))  # a host that never read it before
    with pytest.raises(PartCorrupt, match=r"s3://.*/part-00000\.parquet was changed after its commit .*sphere rerun r1 --stage sft"):
        RunStore(as_path(s3.uri("corrupt")), "r1").read_table("sft")


def test_a_snapshot_answers_from_one_listing_and_refuses_writes(s3):
    store = _committed_run(s3, "snap")
    with snapshot(store.run_dir):
        (store.run_dir / "late.json").parent  # noqa: B018 (pure path)
        assert store.stage_done("sft", "00000") and store.read_table("sft").num_rows == 2
        with pytest.raises(RuntimeError, match="read-only snapshot"):
            store.write_json("late.json", {})
    assert not (store.run_dir / "late.json").exists()


def test_a_model_folder_on_the_store_is_copied_once_and_checked_by_hash(s3, tmp_path):
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text('{"n": 1}')
    (src / "sub" / "weights.bin").write_bytes(os.urandom(3000))
    dest = as_path(s3.uri("models/m1"))
    upload_dir(src, dest)
    local = localize(str(dest))
    assert (os.path.basename(local) != "m1" and open(os.path.join(local, "sub", "weights.bin"), "rb").read()
            == (src / "sub" / "weights.bin").read_bytes())
    assert localize(str(dest)) == local  # once per process
    assert localize(str(tmp_path)) == str(tmp_path)  # a local path is served as it is
    other = as_path(s3.uri("models/m2"))
    upload_dir(src, other)
    (other / "sub" / "weights.bin").write_bytes(b"tampered")
    with pytest.raises(StoreError, match=r"models/m2/sub/weights\.bin does not match its recorded sha256"):
        localize(str(other))


def test_a_bucket_that_does_not_exist_is_one_line_naming_it(s3, tmp_path):
    env = {**os.environ, **s3.env, "COLUMNS": "300", "SPHERE_CACHE": str(tmp_path)}
    for args in (["query", "select 1"], ["run", "--n", "4"]):
        res = subprocess.run([sys.executable, "-m", "flows.cli", *args, "--data-root", "s3://no-such-bucket/x"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120, env=env)
        out = res.stdout + res.stderr
        assert res.returncode == 2 and "bucket 'no-such-bucket' does not exist" in out, out
        assert "Traceback" not in out and len(out.strip().splitlines()) == 1 and s3.secret not in out, out
