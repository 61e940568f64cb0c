"""Operations around a run: config mistakes stop before any work with one message, an
unfinished run is not exported silently, a resumed run cleans a killed writer's leftovers."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from flows.cli import app
from infra.config import ConfigError, RunConfig, check_inputs, load_config
from infra.schemas import from_rows
from infra.storage import RunStore
from tests.conftest import ROOT


def said(res) -> str:
    """What the command printed to stderr, with the terminal's line wrapping undone."""
    return " ".join(res.stderr.split())


@pytest.mark.parametrize("content, words", [
    (b"name: caf\xe9\n", "not UTF-8"),
    (b"", "is empty"),
    (b"# only a comment\n", "is empty"),
])
def test_unreadable_or_empty_configs_are_one_clear_message(tmp_path, content, words):
    f = tmp_path / "c.yaml"
    f.write_bytes(content)
    with pytest.raises(ConfigError, match=words) as e:
        load_config(f)
    assert str(f) in str(e.value)


def test_a_directory_as_config_is_one_clear_message(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    res = CliRunner().invoke(app, ["check-config", str(tmp_path)])
    assert res.exit_code == 2 and "is a directory" in said(res) and "Traceback" not in res.output


def test_a_single_seed_path_given_as_a_string_is_one_path(tmp_path):
    (tmp_path / "data.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n')
    f = tmp_path / "c.yaml"
    f.write_text("seeds:\n  kind: file\n  paths: data.jsonl\n")
    assert load_config(f).seeds.paths == [str(tmp_path / "data.jsonl")]


@pytest.mark.parametrize("make, words", [
    (lambda d: None, "file not found"),
    (lambda d: (d / "seeds.jsonl").mkdir(), "is a directory"),
    (lambda d: (d / "seeds.jsonl").write_bytes(b""), "is empty"),
])
def test_seed_files_that_cannot_be_read_stop_the_run_before_any_work(tmp_path, make, words):
    make(tmp_path)
    f = tmp_path / "c.yaml"
    f.write_text("seeds:\n  kind: file\n  paths: [seeds.jsonl]\n")
    with pytest.raises(ConfigError, match=rf"seeds\.paths\.0: .*seeds\.jsonl {words}"):
        check_inputs(load_config(f), f)
    res = CliRunner().invoke(app, ["run", str(f), "--data-root", str(tmp_path / "data")])
    assert res.exit_code == 2 and words in said(res) and not (tmp_path / "data").exists()


def test_setting_a_tagged_section_without_its_kind_says_to_set_the_kind():
    with pytest.raises(ConfigError, match=r"set `policy\.kind` \(tiny, llamacpp, openai, vllm\)"):
        load_config(ROOT / "configs" / "quickstart.yaml", {"policy": {"model": "m"}})
    with pytest.raises(ConfigError, match=r"set `seeds\.kind` \(builtin, file\)"):
        load_config(ROOT / "configs" / "quickstart.yaml", {"seeds": {"n": 5}})


def test_seeds_with_no_valid_row_fail_the_stage_and_keep_the_quarantine(tmp_path):
    from tasks.seeds import SeedError, seeds_task

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n{"answer": "#### 1"}\n')
    store = RunStore(tmp_path / "data", "r")
    store.save_config(RunConfig.model_validate({"seeds": {"kind": "file", "paths": [str(bad)]}}).model_dump(mode="json"))
    with pytest.raises(SeedError, match="no valid problems in the seeds: 2 rows quarantined"):
        seeds_task.fn(str(store.run_dir), "00000", "h")
    assert store.read_table("quarantine").num_rows == 2


def test_an_unfinished_run_is_not_exported_unless_asked(tmp_path):
    from flows.pipeline import prepare_run, unfinished_stages

    root = tmp_path / "data"
    run_dir = prepare_run(str(ROOT / "configs" / "quickstart.yaml"), "r", str(root), {"seeds.n": 4})
    store = RunStore.at(run_dir)
    store.write("pairs", "routing", "00000", from_rows([], "pairs"))
    assert unfinished_stages(run_dir)[:2] == ["seeds", "generation"]
    res = CliRunner().invoke(app, ["export", "r", "--format", "dpo", "--to", str(tmp_path / "out"), "--data-root", str(root)])
    assert res.exit_code == 2 and "not finished" in said(res) and "seeds" in said(res) and "--resume r`" in said(res)
    assert not (tmp_path / "out").exists()
    res = CliRunner().invoke(app, ["export", "r", "--format", "dpo", "--to", str(tmp_path / "out"), "--data-root", str(root),
                                   "--allow-incomplete"])
    assert res.exit_code == 0 and (tmp_path / "out" / "dpo.jsonl").read_text() == ""
    (store.run_dir / "_done" / "seeds.manifest.json").write_text(json.dumps({"shards": []}))
    (store.run_dir / "_done" / "routing.manifest.json").write_text(json.dumps({"self_correction": [], "diversity": []}))
    for stage in ("seeds", "routing", "sft", "step_pairs", "metrics"):
        store.mark_stage_done(stage, "00000", {}, [])
    assert unfinished_stages(run_dir) == []  # stages with no shards are finished once their upstream is


def test_a_resumed_run_removes_what_a_killed_writer_left(tmp_path):
    from flows.pipeline import prepare_run

    run_dir = prepare_run(str(ROOT / "configs" / "quickstart.yaml"), "r", str(tmp_path), {"seeds.n": 4})
    part = RunStore.at(run_dir).part_path("chains", "generation", "00000")
    part.parent.mkdir(parents=True)
    left = [part.with_name(".part-00000.parquet.4242.tmp"), RunStore.at(run_dir).run_dir / "models" / "train" / ".m1.4242.tmp"]
    left[0].write_bytes(b"half a file")
    left[1].mkdir(parents=True)
    (left[1] / "model.safetensors").write_bytes(b"half")
    prepare_run(str(ROOT / "configs" / "quickstart.yaml"), "r", str(tmp_path), {"seeds.n": 4})
    assert not any(p.exists() for p in left)
