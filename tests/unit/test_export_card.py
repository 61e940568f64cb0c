"""Issue 22.2: an export folder carries its dataset card (``README.md``): ``load_dataset(folder)``
reads it unchanged, one config per format exported there from the same run, and a README the
export did not write is never replaced. (The card's counts against a real run's ``sphere
query``: tests/integration/test_pipeline.py.)"""

from __future__ import annotations

import pyarrow as pa
import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from infra.schemas import from_rows
from tasks import card
from tests.unit.test_damaged_runs import finished_run, said


def _export(root, run_id, fmt, to, *extra):
    return CliRunner().invoke(app, ["export", run_id, "--format", fmt, "--to", str(to), "--data-root", str(root), *extra])


def front_matter(folder) -> dict:
    text = (folder / card.CARD).read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def _with_sft(store, n=4):
    rows = [{"run_id": store.run_id, "sft_id": f"s{i}", "problem_id": f"p{i}", "stage": "generation", "prompt": f"q{i}",
             "completion": f"a{i}", "chain_id": f"c{i}"} for i in range(n)]
    store.write("sft", "sft", "00000", from_rows(rows, "sft"))
    return store


def test_one_folder_holds_every_format_of_a_run_and_loads_by_config(tmp_path):
    datasets = pytest.importorskip("datasets")
    root, out = tmp_path / "data", tmp_path / "out"
    _with_sft(finished_run(root))
    assert _export(root, "r", "sft", out).exit_code == 0
    res = _export(root, "r", "dpo", out, "--chat")
    assert res.exit_code == 0 and f"wrote {out / card.CARD}" in " ".join(res.stdout.split())
    meta = front_matter(out)
    assert [(c["config_name"], c["data_files"], c.get("default")) for c in meta["configs"]] == [
        ("dpo", [{"split": "train", "path": "dpo.parquet"}], True), ("sft", [{"split": "train", "path": "sft.parquet"}], None)]
    assert {i["config_name"]: i["splits"][0]["num_examples"] for i in meta["dataset_info"]} == {"dpo": 15, "sft": 4}
    assert meta["license"] == "other" and meta["task_categories"] == ["text-generation"] and meta["size_categories"] == ["n<1K"]
    assert {"synthetic", "math", "dpo", "sft"} <= set(meta["tags"])
    default = datasets.load_dataset(str(out))  # the card's configs, nothing else given
    assert list(default) == ["train"] and default["train"].num_rows == 15
    assert default["train"][0]["chosen"] == [{"role": "assistant", "content": "c"}]  # the chat export, as written
    sft = datasets.load_dataset(str(out), "sft", split="train")
    assert sft.num_rows == 4 and sft["completion"] == [f"a{i}" for i in range(4)]


def test_the_card_s_features_are_the_files_arrow_schema():
    datasets = pytest.importorskip("datasets")
    chat = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    schema = pa.schema([("prompt", chat), ("chosen", pa.string()), ("depth", pa.int64()), ("margin", pa.float64()),
                        ("ok", pa.bool_()), ("steps", pa.list_(pa.string())), ("missing", pa.null())])
    got = datasets.Features._from_yaml_list(card.features(schema))
    assert got.arrow_schema.remove_metadata() == schema
    with pytest.raises(card.CardError):
        card.features(pa.schema([("t", pa.time32("s"))]))


def test_a_readme_the_export_did_not_write_is_never_replaced(tmp_path):
    root, out = tmp_path / "data", tmp_path / "out"
    finished_run(root)
    out.mkdir()
    (out / "README.md").write_text("# my project\n")
    res = _export(root, "r", "dpo", out)
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"{out / 'README.md'} exists and was not written by sphere export" in said(res)
    assert sorted(p.name for p in out.iterdir()) == ["README.md"] and (out / "README.md").read_text() == "# my project\n"


def test_another_run_s_files_in_the_folder_are_named_but_no_config(tmp_path):
    datasets = pytest.importorskip("datasets")
    root, out = tmp_path / "data", tmp_path / "out"
    finished_run(root, "r")
    _with_sft(finished_run(root, "other"), 3)
    assert _export(root, "r", "dpo", out).exit_code == 0
    assert _export(root, "other", "sft", out).exit_code == 0  # rewrites the card, for run "other"
    assert [c["config_name"] for c in front_matter(out)["configs"]] == ["sft"]
    text = (out / card.CARD).read_text()
    assert "run `other`" in text and "not part of this card" in text and "dpo.parquet" in text.split("not part of this card")[1]
    assert datasets.load_dataset(str(out), split="train").num_rows == 3
