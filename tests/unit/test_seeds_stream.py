"""The seeds stage at scale: streamed batches, shards written as they fill, resume, bounded memory."""

import itertools
import json
import os
import tracemalloc

import pyarrow as pa
import pytest

import tasks.seed_shards as seed_shards
import tasks.seeds as seeds
from infra.config import FileSeeds, RunConfig
from infra.storage import RunStore
from infra.validation import validate
from tasks.answers import check_gold
from tasks.seed_ids import ProblemIdSet
from tasks.seeds import file_batches, load_seeds, seeds_task, shard_problems
from tests.unit.test_seeds import write_bad_file


def write_good_rows(path, n, start=0, dup_every=0):
    """``n`` distinct GSM8K rows appended to ``path`` (a copy of an earlier row every ``dup_every``)."""
    with open(path, "ab") as f:
        for i in range(start, start + n):
            j = i - 1 if dup_every and i % dup_every == 0 and i > start else i
            f.write(json.dumps({"question": f"Ann has {j} apples and buys {j % 7 + 1} more. How many apples?",
                                "answer": f"{j}+{j % 7 + 1}={j + j % 7 + 1}\n#### {j + j % 7 + 1}"}).encode() + b"\n")


def hostile_file(tmp_path, n_good=400):
    f = tmp_path / "hostile.jsonl"
    write_bad_file(f, big_bytes=1_100_000)
    write_good_rows(f, n_good, dup_every=9)
    write_bad_file(tmp_path / "more.jsonl", big_bytes=1_100_000)
    with open(f, "ab") as out:  # the hostile rows again, after the good ones (duplicates now)
        out.write((tmp_path / "more.jsonl").read_bytes())
    return f


def new_run(tmp_path, name, seeds_cfg, shard_size):
    store = RunStore(tmp_path / name, "r")
    store.save_config(RunConfig.model_validate({"seeds": {"kind": "file", **seeds_cfg},
                                                "generation": {"shard_size": shard_size}}).model_dump(mode="json"))
    return store


@pytest.fixture
def small_blocks(monkeypatch):
    """Many batches, suite blocks and quarantine parts from a small file."""
    monkeypatch.setattr(seeds, "BATCH_ROWS", 37)
    monkeypatch.setattr(seed_shards, "VALIDATE_ROWS", 60)
    monkeypatch.setattr(seed_shards, "QUARANTINE_ROWS", 4)


@pytest.mark.parametrize("batch_rows", [1, 3, 50, 10_000])
@pytest.mark.parametrize("limit", [None, 1, 100])
def test_batches_concatenate_to_the_same_rows_whatever_their_size(tmp_path, batch_rows, limit):
    f = hostile_file(tmp_path, 200)
    cfg = FileSeeds(paths=[str(f)], limit=limit)
    whole, whole_bad = load_seeds(cfg, "r")
    batches = list(file_batches(cfg, "r", batch_rows))
    assert pa.concat_tables(b[0] for b in batches).equals(whole)
    assert pa.concat_tables(b[1] for b in batches).equals(whole_bad)
    assert whole.num_rows == (limit or 2 + 200 - 200 // 9)  # every 9th good row repeats the one before it
    assert len(set(whole.column("problem_id").to_pylist())) == whole.num_rows
    if limit is None:
        checks = whole_bad.column("check").to_pylist()
        assert checks.count("duplicate_problem") == 1 + 200 // 9 + 3  # + the hostile rows' 3 good ones, seen again
        assert whole_bad.column("source").to_pylist()[-1].endswith(f"hostile.jsonl:{11 + 200 + 11}")


def test_the_limit_counts_over_all_files(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_good_rows(a, 5)
    write_good_rows(b, 5, start=100)
    problems, _ = load_seeds(FileSeeds(paths=[str(a), str(b)], limit=7), "r")
    assert problems.num_rows == 7 and problems.column("source").to_pylist()[-1].endswith("b.jsonl:2")


def test_a_missing_second_file_fails_before_anything_is_read(tmp_path):
    a = tmp_path / "a.jsonl"
    write_good_rows(a, 5)
    with pytest.raises(seeds.SeedError, match="not found"):
        next(file_batches(FileSeeds(paths=[str(a), str(tmp_path / "b.jsonl")]), "r"))


def test_streamed_shards_are_the_slices_of_the_whole_table_file_for_file(tmp_path, small_blocks):
    f = hostile_file(tmp_path)
    store = new_run(tmp_path, "data", {"paths": [str(f)]}, 7)
    seeds_task.fn(str(store.run_dir), "00000", "h")
    manifest = json.loads((store.run_dir / "_done" / "seeds.manifest.json").read_text())
    whole, bad = load_seeds(FileSeeds(paths=[str(f)]), "r")
    expected = shard_problems(whole, 7)
    assert manifest == {"shards": list(expected), "problems": whole.num_rows, "quarantined": bad.num_rows}
    reference = RunStore(tmp_path / "reference", "r")  # what the one-table path wrote: each slice through its suite
    for shard, part in expected.items():
        reference.write("problems", "seeds", shard, validate("problems", part).good)
        assert store.read_part("problems", "seeds", shard).equals(part)
        assert store.marker("problems", "seeds", shard)["sha256"] == reference.marker("problems", "seeds", shard)["sha256"]
    assert store.read_table("quarantine", "seeds-parse").equals(bad)
    assert len(store.committed_shards("quarantine", "seeds-parse")) == -(-bad.num_rows // 4)
    val = store.read_table("validation", "seeds-problems")
    assert all(val.column("success").to_pylist()) and sum(val.column("element_count").to_pylist()) == 5 * whole.num_rows


def committed_files(store):
    return {p: (os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in sorted(store.run_dir.rglob("*"))
            if p.is_file() and "_superseded" not in p.parts and p.name != "config.json"}


def test_a_resume_after_a_kill_mid_seeds_rewrites_no_committed_shard(tmp_path, small_blocks, monkeypatch):
    f = hostile_file(tmp_path)
    store = new_run(tmp_path, "data", {"paths": [str(f)]}, 7)
    real_write, calls = RunStore.write, itertools.count()

    def dying_write(self, table_name, *args, **kw):
        if table_name == "problems" and next(calls) >= 20:
            raise KeyboardInterrupt("killed")  # not an Exception: nothing may swallow it
        return real_write(self, table_name, *args, **kw)

    monkeypatch.setattr(RunStore, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        seeds_task.fn(str(store.run_dir), "00000", "h")
    before = committed_files(store)
    done_shards = [sh for _, sh in store.committed_shards("problems", "seeds")]
    assert 20 <= len(done_shards) < 50 and not (store.run_dir / "_done" / "seeds.manifest.json").exists()

    written = []
    monkeypatch.setattr(RunStore, "write", lambda self, t, st, sh, *a, **kw: written.append((t, st, sh)) or real_write(self, t, st, sh, *a, **kw))
    seeds_task.fn(str(store.run_dir), "00000", "h")
    after = committed_files(store)
    assert {p: after[p] for p in before} == before  # not one committed part or marker was touched
    assert not {("problems", "seeds", sh) for sh in done_shards} & set(written)
    clean = new_run(tmp_path, "clean", {"paths": [str(f)]}, 7)
    monkeypatch.setattr(RunStore, "write", real_write)
    seeds_task.fn(str(clean.run_dir), "00000", "h")
    for table in ("problems", "quarantine", "validation"):
        assert store.read_table(table).equals(clean.read_table(table))
    assert json.loads((store.run_dir / "_done" / "seeds.manifest.json").read_text()) == \
        json.loads((clean.run_dir / "_done" / "seeds.manifest.json").read_text())


def test_a_new_shard_size_moves_the_old_shards_aside_and_a_rerun_writes_nothing(tmp_path, small_blocks, monkeypatch):
    f = hostile_file(tmp_path)
    store = new_run(tmp_path, "data", {"paths": [str(f)]}, 7)
    seeds_task.fn(str(store.run_dir), "00000", "h")
    n = len(store.committed_shards("problems", "seeds"))
    store.save_config({**store.load_config(), "generation": {**store.load_config()["generation"], "shard_size": 100}})
    seeds_task.fn(str(store.run_dir), "00000", "h2")
    assert [sh for _, sh in store.committed_shards("problems", "seeds")] == ["00000", "00001", "00002", "00003"]
    assert len(list((store.run_dir / "_superseded").rglob("problems/seeds/part-*.parquet"))) == n - 4
    assert len(store.committed_shards("validation", "seeds-problems")) == 4  # one block per shard of 100 now
    real_write, written = RunStore.write, []
    monkeypatch.setattr(RunStore, "write", lambda self, *a, **kw: written.append(a) or real_write(self, *a, **kw))
    (store.stage_marker_path("seeds", "00000")).unlink()
    seeds_task.fn(str(store.run_dir), "00000", "h2")
    assert written == [] and store.read_table("problems").num_rows == load_seeds(FileSeeds(paths=[str(f)]), "r")[0].num_rows


def peak_bytes(tmp_path, n):
    f = tmp_path / f"s{n}.jsonl"
    write_good_rows(f, n)
    store = new_run(tmp_path, f"data{n}", {"paths": [str(f)]}, 500)
    tracemalloc.start()
    try:
        seeds_task.fn(str(store.run_dir), "00000", "h")
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_stage_memory_does_not_grow_with_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(seeds, "BATCH_ROWS", 2_000)
    monkeypatch.setattr(seed_shards, "VALIDATE_ROWS", 2_000)
    validate("problems", load_seeds(FileSeeds(paths=[str(hostile_file(tmp_path, 10))]), "r")[0])  # GX's context, built once
    small, large = peak_bytes(tmp_path, 5_000), peak_bytes(tmp_path, 50_000)
    assert large / small < 2.5, (small, large)  # the one-table path: about 9


def test_problem_id_set_is_exact_for_ids_that_share_their_high_bits():
    s = ProblemIdSet()
    s.add(["0123456789abcdef0001", "ffffffffffffffff0000"])
    assert s.contains(["0123456789abcdef0001", "0123456789abcdef0002", "ffffffffffffffff0000", "0000000000000000ffff"]).tolist() == \
        [True, False, True, False]
    s.add(["0123456789abcdef0002"])
    assert s.contains(["0123456789abcdef0002", "0123456789abcdef0001"]).tolist() == [True, True]
    assert len(s) == 3 and s.nbytes == 30


@pytest.mark.parametrize("gold", ["0", "7", "-12", "1234567890", "-" + "9" * 18, "007"])
def test_the_fast_integer_gold_check_agrees_with_check_gold(gold):
    assert seeds._INTEGER.fullmatch(gold) and check_gold(gold, "gsm8k") is None
