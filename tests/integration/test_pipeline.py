"""The whole flow in process: real Prefect API, real local Ray actors, real DuckDB and GX."""

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infra import catalog
from infra.query import query as run_query
from infra.storage import RunStore
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def finished_run(prefect_api, ray_local, tmp_path_factory):
    from flows.pipeline import sphere_run

    root = tmp_path_factory.mktemp("data")
    (root / "runs").mkdir()
    # An analyst's long query runs beside the run the whole time: the run must not wait for it or fail on it.
    reader = subprocess.Popen([str(Path(sys.executable).parent / "sphere"), "query", LONG_QUERY, "--data-root", str(root), "--timeout", "900"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    overrides = {"seeds.n": 30, "generation.shard_size": 10, "self_correction.shard_size": 4, "diversity.shard_size": 8, "pool.actors": 2}
    try:
        summary = sphere_run(config_path=str(ROOT / "configs" / "quickstart.yaml"), run_id="it-run", data_root=str(root), overrides=overrides)
        summary["reader_still_running"] = reader.poll() is None
    finally:
        reader.kill()
        summary_err = reader.communicate()[1]
    summary["reader_stderr"] = summary_err
    return root, summary, overrides


LONG_QUERY = "select count(*) from range(3000000000) a, range(1000) b"


def test_a_long_query_beside_the_run_neither_blocks_nor_fails_it(finished_run):
    root, summary, _ = finished_run
    assert summary["reader_still_running"], f"the reader ended before the run: {summary['reader_stderr']}"
    assert catalog.catalog_path(root).is_file()  # refreshed while the reader held its views
    got = run_query(root, "select run_id, status, error from runs").to_pylist()
    assert got == [{"run_id": "it-run", "status": "finished", "error": None}]


def test_every_problem_gets_two_chains_a_route_and_validated_rows(finished_run):
    root, summary, _ = finished_run
    c = summary["counts"]
    assert c["problems"] == 30 and c["routes"] == 30
    assert sum(summary["routes"].values()) == 30
    store = RunStore(root, "it-run")
    chains = store.read_table("chains", "generation").to_pylist()
    assert len(chains) == 60
    assert {ch["verdict"] for ch in chains} <= {"correct", "wrong", "no_answer"}
    for ch in chains:
        assert ch["n_steps"] == len(ch["steps"]) == len(ch["step_scores"]) and ch["model"].startswith("tiny:")
        assert (ch["error"] is not None) == (ch["verdict"] == "no_answer")
        assert ch["text"] == "\n\n".join(ch["steps"])
    pairs = store.read_table("pairs", "routing").to_pylist()
    assert len(pairs) == summary["routes"].get("generation_pair", 0)
    by_id = {ch["chain_id"]: ch for ch in chains}
    for p in pairs:
        assert by_id[p["chosen_chain_id"]]["correct"] and not by_id[p["rejected_chain_id"]]["correct"]


def test_self_correction_and_diversity_stages_follow_their_routes(finished_run):
    root, summary, _ = finished_run
    store = RunStore(root, "it-run")
    routes = {r["problem_id"]: r["route"] for r in store.read_table("routes").to_pylist()}
    gen = {(c["problem_id"], c["branch"]): c for c in store.read_table("chains", "generation").to_pylist()}
    sc = store.read_table("chains", "self_correction").to_pylist()
    di = store.read_table("chains", "diversity").to_pylist()
    assert len(sc) == 2 * summary["routes"].get("self_correction", 0) > 0
    assert len(di) == 2 * summary["routes"].get("diversity_induction", 0) > 0
    for c in sc:
        assert routes[c["problem_id"]] == "self_correction" and c["parent_chain_id"] == gen[(c["problem_id"], "max")]["chain_id"]
        assert "Review:" in c["prompt"] and len(c["step_scores"]) == c["n_steps"]
    assert all(routes[c["problem_id"]] == "diversity_induction" and c["model"] == "tiny:tiny-small" for c in di)
    assert {c["candidates"] for c in di} == {10}  # 2E by default
    # Every pair, from every stage, passed its suite; their counts are stored with the run.
    val = [v for v in store.read_table("validation").to_pylist() if v["table"] in ("pairs", "sft")]
    assert val and all(v["success"] for v in val)
    assert sum(summary["pairs_by_stage"].values()) == summary["counts"]["pairs"]
    sft = store.read_table("sft").to_pylist()
    correct_ids = {c["chain_id"] for c in store.read_table("chains").to_pylist() if c["correct"]}
    assert sft and all(r["chain_id"] in correct_ids for r in sft)
    # Validation results stored with the run, one row per expectation per shard.
    val = store.read_table("validation").to_pylist()
    assert {(v["table"], v["stage"]) for v in val} >= {("problems", "seeds"), ("chains", "generation")}


def test_step_pairs_hold_one_right_and_one_wrong_step_after_the_same_prefix_and_export_for_trl(finished_run, tmp_path):
    """Issue 21.1: the step_pairs stage's rows, checked against the chains they come from, and
    their ``step_dpo`` export (TRL's prompt/chosen/rejected columns)."""
    import datasets

    from tasks.export import export_run

    root, summary, _ = finished_run
    store = RunStore(root, "it-run")
    chains = {c["chain_id"]: c for c in store.read_table("chains").to_pylist()}
    steps = store.read_table("step_pairs").to_pylist()
    assert {p["source"] for p in steps} == {"search", "candidates", "correction"} and summary["counts"]["step_pairs"] == len(steps)
    for p in steps:
        good, bad = chains[p["chosen_chain_id"]], chains[p["rejected_chain_id"]]
        d = p["depth"]
        if p["source"] == "candidates":  # two candidates the search scored at one node of this chain's prefix
            scored = dict(zip(good["step_candidates"][d], good["candidate_scores"][d]))
            assert good["correct"] and p["chosen"] == good["steps"][d]  # step_pairs.chosen = verified
            assert scored[p["chosen"]] == p["chosen_score"] >= 0.75 and scored[p["rejected"]] == p["rejected_score"] <= 0.25
            assert p["prompt"] == good["prompt"] + "".join(s + "\n\n" for s in good["steps"][:d])
            continue
        assert good["steps"][:d] == bad["steps"][:d] and (p["chosen"], p["rejected"]) == (good["steps"][d], bad["steps"][d])
        assert good["step_scores"][d] >= 0.75 and bad["step_scores"][d] <= 0.25
        solve = bad["prompt"] if p["source"] == "correction" else good["prompt"]  # a correction trains under the solve prompt
        assert p["prompt"] == solve + "".join(s + "\n\n" for s in good["steps"][:d])
    export_run(store.run_dir, "step_dpo", tmp_path / "out")
    ds = datasets.load_dataset("json", data_files=str(tmp_path / "out" / "step_dpo.jsonl"), split="train")
    assert ds.num_rows == len(steps) and {"prompt", "chosen", "rejected"} <= set(ds.column_names)
    _trl_dpo_trains_on(ds, tmp_path / "trl")


def _trl_dpo_trains_on(ds, out: Path) -> None:
    """Issue 21: the step_dpo export, as loaded, trains under TRL's own DPOTrainer (no project
    code in between) for at least 20 optimizer steps on CPU from the shipped tiny-small."""
    import math

    pytest.importorskip("trl")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    small = ROOT / "infra" / "models" / "tiny-small"
    tok = AutoTokenizer.from_pretrained(small)
    tok.pad_token = tok.pad_token or tok.eos_token
    while ds.num_rows < 80:  # a small run's export: repeat it to 20 steps of 4
        ds = datasets_concat([ds, ds])
    args = DPOConfig(output_dir=str(out), max_steps=20, per_device_train_batch_size=4, learning_rate=1e-4, report_to="none",
                     use_cpu=True, disable_tqdm=True, logging_steps=1, save_strategy="no", max_length=256)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(small), args=args, processing_class=tok,
                         train_dataset=ds.select_columns(["prompt", "chosen", "rejected"]))
    trainer.train()
    losses = [x["loss"] for x in trainer.state.log_history if "loss" in x]
    assert trainer.state.global_step == 20 and len(losses) == 20 and all(math.isfinite(x) for x in losses)


def datasets_concat(parts):
    import datasets

    return datasets.concatenate_datasets(parts)


def test_catalog_answers_across_the_run(finished_run):
    root, summary, _ = finished_run
    got = run_query(root, "select stage, count(*) as n from chains group by 1 order by 1").to_pylist()
    assert [g["stage"] for g in got] == ["diversity", "generation", "self_correction"]
    assert got[1]["n"] == 60 and sum(g["n"] for g in got) == summary["counts"]["chains"]


def test_rerun_of_a_finished_run_recomputes_nothing(finished_run):
    from flows.pipeline import sphere_run

    root, summary, overrides = finished_run
    store = RunStore(root, "it-run")
    markers = {p.name: p.stat().st_mtime_ns for p in (store.run_dir / "_done").glob("chains.*")}
    again = sphere_run(config_path=str(ROOT / "configs" / "quickstart.yaml"), run_id="it-run", data_root=str(root), overrides=overrides)
    assert again["counts"] == summary["counts"]
    assert again["cost"] == summary["cost"]  # the committed shards' cost, not this invocation's (nothing) nor doubled
    assert {p.name: p.stat().st_mtime_ns for p in (store.run_dir / "_done").glob("chains.*")} == markers


def test_run_publishes_prefect_artifacts(finished_run):
    _, summary, _ = finished_run
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read(key):
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

    summary_md = asyncio.run(read("sphere-run-summary"))
    counts = asyncio.run(read("sphere-row-counts"))
    # the session's Prefect API holds other tests' runs too: find this run's artifacts
    mine = [a for a in summary_md if "Run `it-run`" in a.data]
    assert mine and "Validation:" in mine[0].data
    assert any(a.flow_run_id == mine[0].flow_run_id and '"chains"' in str(a.data).replace("'", '"') for a in counts)
    cost = [a for a in asyncio.run(read("sphere-stage-cost")) if a.flow_run_id == mine[0].flow_run_id]
    assert len(cost) == 1
    rows = json.loads(cost[0].data) if isinstance(cost[0].data, str) else cost[0].data
    assert {r["stage"]: r["completion_tokens"] for r in rows} == {st: c["completion_tokens"] for st, c in summary["cost"].items()}


def test_llamacpp_backend_end_to_end_with_packaged_smollm2(prefect_api, ray_local, tmp_path):
    from flows.pipeline import sphere_run

    summary = sphere_run(config_path=str(ROOT / "configs" / "smollm2.yaml"), run_id="smol", data_root=str(tmp_path),
                         overrides={"seeds.n": 2, "search.max_depth": 2, "search.max_step_tokens": 32,
                                    "self_correction.enabled": False, "diversity.enabled": False})
    chains = RunStore(tmp_path, "smol").read_table("chains", "generation").to_pylist()
    assert len(chains) == 4 and summary["counts"]["problems"] == 2
    assert all(c["model"] == "llamacpp:SmolLM2-135M-Instruct.Q4_1.gguf" for c in chains)
    assert all(c["n_steps"] >= 1 and c["sampled_tokens"] > 0 for c in chains)
    assert {c["verdict"] for c in chains} <= {"correct", "wrong", "no_answer"}


def test_export_loads_with_the_datasets_library(finished_run, tmp_path):
    import datasets

    from tasks.export import export_run

    root, summary, _ = finished_run
    run_dir = root / "runs" / "it-run"
    export_run(run_dir, "dpo", tmp_path / "plain")
    export_run(run_dir, "sft", tmp_path / "plain")
    export_run(run_dir, "dpo", tmp_path / "chat", chat=True)
    for kind, files in (("json", "dpo.jsonl"), ("parquet", "dpo.parquet")):
        d = datasets.load_dataset(kind, data_files=str(tmp_path / "plain" / files), split="train")
        assert d.num_rows == summary["counts"]["pairs"] and {"prompt", "chosen", "rejected"} <= set(d.column_names)
    s = datasets.load_dataset("json", data_files=str(tmp_path / "plain" / "sft.jsonl"), split="train")
    assert s.num_rows == summary["counts"]["sft"] and {"prompt", "completion"} <= set(s.column_names)
    c = datasets.load_dataset("parquet", data_files=str(tmp_path / "chat" / "dpo.parquet"), split="train")
    assert c[0]["prompt"][0]["role"] == "user" and c[0]["chosen"][0]["role"] == "assistant"


def _card_table(text: str, heading: str) -> list[list[str]]:
    """The body rows of the Markdown table under ``## heading`` of a dataset card (cells stripped)."""
    section = text.split(f"\n## {heading}\n")[1].split("\n## ")[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("| ")]
    return [[c.strip() for c in ln.strip().strip("|").split(" | ")] for ln in lines[1:]]


def test_an_export_folder_carries_its_card_and_its_counts_are_the_catalog_s(finished_run, tmp_path):
    """Issue 22.2: every format exported into one folder; ``load_dataset(folder)`` reads it through
    the card's configs, by config name too; the card's YAML parses and every count and QDC value
    in it is what ``sphere query`` answers for the run."""
    import datasets
    import yaml

    from tasks.card import CARD, QDC
    from tasks.export import export_run

    root, summary, _ = finished_run
    out = tmp_path / "card"
    for fmt in ("dpo", "sft", "step_dpo"):
        assert export_run(root / "runs" / "it-run", fmt, out)[-1] == out / CARD
    text = (out / CARD).read_text(encoding="utf-8")
    meta = yaml.safe_load(text.split("---\n")[1])
    rows = {"dpo": summary["counts"]["pairs"], "sft": summary["counts"]["sft"], "step_dpo": summary["counts"]["step_pairs"]}
    assert [(c["config_name"], c["data_files"][0]["path"]) for c in meta["configs"]] == [(f, f"{f}.parquet") for f in rows]
    assert {i["config_name"]: i["splits"][0]["num_examples"] for i in meta["dataset_info"]} == rows
    assert meta["license"] == "other" and "set `license:`" in text
    assert datasets.load_dataset(str(out))["train"].num_rows == rows["dpo"]  # the default config
    for fmt, n in rows.items():
        d = datasets.load_dataset(str(out), fmt, split="train")
        assert d.num_rows == n and d.column_names == [f["name"] for f in next(i for i in meta["dataset_info"]
                                                                               if i["config_name"] == fmt)["features"]]

    def ask(sql: str) -> list[list[str]]:
        return sorted([["—" if v is None else str(v) for v in r.values()] for r in run_query(root, sql).to_pylist()])

    where = "where run_id = 'it-run'"
    per_stage = [[t, *r] for t in ("chains", "pairs", "step_pairs", "sft")
                 for r in ask(f"select stage, count(*) from {t} {where} group by all")]
    assert sorted(_card_table(text, "Rows per stage")) == sorted(per_stage) and len(per_stage) >= 6
    assert sorted(_card_table(text, "Routes")) == ask(f"select route, count(*) from routes {where} group by all")
    assert sorted(_card_table(text, "Models")) == ask(f"select stage, model, count(*) from chains {where} group by all")
    quarantined = ask(f'select stage, "table", "check", count(*) from quarantine {where} group by all')
    assert (sorted(_card_table(text, "Quarantine")) == quarantined) if quarantined else ("No row was quarantined." in text)
    metrics = {(r["stage"], r["table"], r["metric"]): r for r in run_query(root, f"select * from metrics {where}").to_pylist()}
    qdc = _card_table(text, "Quality, diversity, complexity")
    assert {(r[0], r[1]) for r in qdc} == {(s, t) for s, t, _ in metrics}
    for stage, table, n, *values in qdc:
        got = [metrics.get((stage, table, m)) for m in QDC]
        assert values == ["—" if g is None or g["value"] != g["value"] else f"{g['value']:.3f}" for g in got]
        assert n == str(next(r["n"] for (s, t, _), r in metrics.items() if (s, t) == (stage, table)))
    settings = dict(_card_table(text, "Run configuration"))
    assert (settings["policy (model/backend)"], settings["search candidates (E)"], settings["temperature (T)"]) == ("tiny:policy", "5", "0.8")
    assert settings["seed problems in the run"] == str(summary["counts"]["problems"]) == "30"


def test_qdc_metrics_are_stored_per_stage_and_table_and_agree_with_the_chains(finished_run):
    root, summary, _ = finished_run
    store = RunStore(root, "it-run")
    m = {(r["stage"], r["table"], r["metric"]): r for r in store.read_table("metrics").to_pylist()}
    assert {(s, t) for s, t, _ in m} >= {("generation", "chains"), ("self_correction", "chains"), ("diversity", "chains"),
                                          ("generation", "pairs"), ("sft", "sft")}
    gen = store.read_table("chains", "generation").to_pylist()
    assert m[("generation", "chains", "accuracy")]["value"] == sum(c["correct"] for c in gen) / len(gen)
    assert m[("generation", "chains", "accuracy")]["n"] == len(gen)
    per_problem = {}
    for c in gen:
        per_problem.setdefault(c["problem_id"], []).append(c["correct"])
    want = sum(sum(v) / len(v) for v in per_problem.values()) / len(per_problem)
    assert abs(m[("generation", "chains", "solve_rate")]["value"] - want) < 1e-12
    assert all(m[(s, t, "vendi_q1")]["value"] >= 1.0 for s, t, _ in m if (s, t, "vendi_q1") in m)
    assert m[("generation", "pairs", "pair_validity")]["value"] == 1.0
    steps = [p for p in store.read_table("step_pairs").to_pylist() if p["stage"] == "generation"]  # the step pairs' QDC
    assert steps and m[("generation", "step_pairs", "vendi_q1")]["n"] == len(steps)
    want = sum(p["chosen_score"] - p["rejected_score"] for p in steps) / len(steps)
    assert abs(m[("generation", "step_pairs", "mean_margin")]["value"] - want) < 1e-9
    assert m[("generation", "step_pairs", "candidate_share")]["value"] == sum(p["source"] == "candidates" for p in steps) / len(steps)
    got = run_query(root, "select count(*) as n from metrics where run_id = 'it-run'").to_pylist()[0]["n"]
    assert got == len(m)


def _chains_made(store: RunStore, stage: str) -> list[dict]:
    """Every chain a stage's committed shards made: the committed rows and the quarantined ones."""
    bad = [json.loads(q["row"]) for q in store.read_table("quarantine").to_pylist() if q["stage"] == stage and q["table"] == "chains"]
    return store.read_table("chains", stage).to_pylist() + bad


def test_summary_cost_per_stage_agrees_with_the_committed_chains(finished_run):
    root, summary, _ = finished_run
    store = RunStore(root, "it-run")
    cost = summary["cost"]
    assert list(cost) == ["generation", "self_correction", "diversity"]  # model stages only, in run order
    for stage, c in cost.items():
        chains = _chains_made(store, stage)
        assert c["shards"] == len(store.committed_shards("chains", stage)) > 0
        assert c["engine_seconds"] > 0 and c["prompt_tokens"] > 0
        # the engines generated every candidate: at least the chosen steps, at most what the chains saw sampled
        # (a request shared by a problem's MAX and MIN chains is in both chains' sampled_tokens)
        assert sum(ch["completion_tokens"] for ch in chains) <= c["completion_tokens"] <= sum(ch["sampled_tokens"] for ch in chains)
        if stage == "self_correction":
            continue  # its chains start from kept steps: the requests per chain are not recoverable from the rows
        # one request per distinct (problem, steps so far) at each depth a chain took part in
        assert all(ch["finish"] != "error" for ch in chains)
        requests = {(ch["problem_id"], tuple(ch["steps"][:d]))
                    for ch in chains for d in range(ch["n_steps"] + (ch["finish"] == "no_candidates"))}
        assert c["requests"] == len(requests)
        assert c["completions"] == len(requests) * chains[0]["candidates"]
    html = Path(summary["report"]).read_text()
    assert "What each stage cost" in html
    for stage, c in cost.items():
        assert f"<td>{stage}</td><td>{c['requests']}</td><td>{c['completions']}</td><td>{c['prompt_tokens']}</td>" \
               f"<td>{c['completion_tokens']}</td>" in html


def test_a_resume_recomputing_one_shard_replaces_its_cost_and_keeps_the_others(finished_run, tmp_path):
    from flows.pipeline import sphere_run

    root, summary, overrides = finished_run
    shutil.copytree(root / "runs" / "it-run", tmp_path / "runs" / "it-run")  # the shared run stays as it is
    store = RunStore(tmp_path, "it-run")
    before = {sh: store.stage_marker("generation", sh)["cost"] for _, sh in store.committed_shards("chains", "generation")}
    shard = sorted(before)[0]
    store.unmark_stage("generation", shard)  # as if the run had been killed before this shard's commit
    again = sphere_run(config_path=str(ROOT / "configs" / "quickstart.yaml"), run_id="it-run", data_root=str(tmp_path), overrides=overrides)
    redone = store.stage_marker("generation", shard)["cost"]
    assert redone["engine_seconds"] > 0  # measured again in this invocation
    got, was = again["cost"]["generation"], summary["cost"]["generation"]
    # the tiny backend is reproducible: the recomputed shard made the same requests and tokens, counted once
    assert {k: got[k] for k in ("requests", "completions", "prompt_tokens", "completion_tokens", "shards")} == \
           {k: was[k] for k in ("requests", "completions", "prompt_tokens", "completion_tokens", "shards")}
    assert abs(got["engine_seconds"] - (was["engine_seconds"] - before[shard]["engine_seconds"] + redone["engine_seconds"])) < 0.01
    assert {st: again["cost"][st] for st in ("self_correction", "diversity")} == {st: summary["cost"][st] for st in ("self_correction", "diversity")}
