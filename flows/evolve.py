"""Self-evolution (``sphere evolve``): round r runs every stage with policy_r, trains
policy_{r+1} on round r's pairs (reference = policy_r), evaluates it on held-out problems and
hands it to round r+1.

``sphere_evolve(config, rounds, evolve_id)`` is the parent flow ``sphere-evolve``; each round is
a subflow ``round-<r>`` that runs the factory (``sphere-run``, every declared stage, with
``train`` and ``evaluate`` enabled, ``round`` = r and ``policy`` = the previous round's
checkpoint). A round's run id is ``<evolve_id>-r<r>``, so ``--resume EVOLVE_ID`` resumes the
unfinished round's run from its last committed shard (and a killed training from its last
epoch checkpoint) and then goes on. The record ``<data_root>/evolve/<evolve_id>.json`` lists
the rounds, their runs, policies and held-out accuracy; the report
``<data_root>/evolve/<evolve_id>.html`` shows accuracy per round with CIs beside the QDC of
each round's data and the training curves. The small policy of diversity induction stays
fixed unless the config's ``diversity.small_policy`` says otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.pipeline import new_run_id, sphere_run
from infra.config import RunConfig, load_config
from infra.locks import writer_lock
from infra.storage import RunStore, atomic_write_text, read_json
from tasks.evaluate import mcnemar
from tasks.evolve_report import write_evolve_report
from tasks.train import policy_checkpoint, trained_backend


class EvolveError(ValueError):
    """An evolve cannot start or go on (bad rounds, a round that trained no model)."""


REPAIR = "it lists the evolve's finished rounds: restore it, or start a new evolve (the rounds' runs are kept under runs/)"


def new_evolve_id(name: str) -> str:
    return new_run_id(f"{name}-evolve")


def _record_path(root: Path, evolve_id: str) -> Path:
    return root / "evolve" / f"{evolve_id}.json"


@flow(name="evolve-round", flow_run_name="round-{round}")
def evolve_round(config_path: str, evolve_id: str, round: int, policy: dict, data_root: str, overrides: dict | None = None) -> dict:
    """One round: the factory run with ``policy``, training and evaluation; returns the round's record."""
    run_id = f"{evolve_id}-r{round}"
    sets = {**(overrides or {}), "train.enabled": True, "evaluate.enabled": True, "round": round, "evolve_id": evolve_id,
            "policy": policy}
    summary = sphere_run(config_path=config_path, run_id=run_id, data_root=data_root, overrides=sets)
    store = RunStore(Path(data_root), run_id)
    models = store.read_table("models", "train").to_pylist()
    if not models:
        raise EvolveError(f"round {round} ({run_id}) trained no model; see its train_log and pairs")
    evals = [e for e in store.read_table("evals").to_pylist() if e["metric"] != "overlap_removed"]
    cfg = RunConfig.model_validate(store.load_config())
    nxt = trained_backend(cfg.policy, models[0]["path"]).model_dump(mode="json")
    create_table_artifact(key=f"sphere-evolve-round-{round}", table=[{k: e[k] for k in ("round", "model", "metric", "value", "ci_low", "ci_high", "n")} for e in evals],
                          description=f"Held-out accuracy, round {round} of {evolve_id}")
    return {"round": round, "run_id": run_id, "policy": policy, "model": models[0], "next_policy": nxt, "evals": evals,
            "counts": summary["counts"], "pairs_by_stage": summary["pairs_by_stage"]}


def _evolve_name() -> str:
    from prefect.runtime import flow_run

    return f"evolve-{flow_run.parameters.get('evolve_id') or 'new'}"


@flow(name="sphere-evolve", flow_run_name=_evolve_name)
def sphere_evolve(config_path: str, rounds: int = 2, evolve_id: str | None = None, data_root: str | None = None,
                  overrides: dict | None = None) -> dict:
    """Run ``rounds`` rounds (resuming an existing ``evolve_id``: finished rounds are kept).
    Without an ``evolve_id`` (a deployment's scheduled run) the id comes from the flow run,
    so ``prefect flow-run retry`` resumes the same evolve."""
    from prefect.runtime import flow_run

    if rounds < 1:
        raise EvolveError(f"--rounds must be at least 1, got {rounds}")
    cfg = load_config(config_path, {**(overrides or {}), "train.enabled": True, "evaluate.enabled": True})  # validated before any work
    evolve_id = evolve_id or (f"{cfg.name}-evolve-fr{str(flow_run.get_id()).replace('-', '')[:12]}" if flow_run.get_id()
                              else new_evolve_id(cfg.name))
    start = policy_checkpoint(cfg.policy)
    if not start.is_dir():
        raise EvolveError(f"the starting policy's checkpoint {start} is not a directory (a Hugging Face checkpoint is needed to train)")
    root = Path(data_root or cfg.data_root).resolve()
    path = _record_path(root, evolve_id)
    with writer_lock(path.with_suffix(".lock"), f"evolve {evolve_id}"):  # one writer per evolve: WriterLocked names the other
        record = read_json(path, REPAIR) if path.is_file() else {"evolve_id": evolve_id, "config": config_path,
                                                                 "overrides": overrides or {}, "rounds": []}
        atomic_write_text(path, json.dumps(record, indent=2, default=str))  # so --resume finds an evolve killed in its first round
        done = [r for r in record["rounds"] if r.get("finished")]
        policy = done[-1]["next_policy"] if done else cfg.policy.model_dump(mode="json")
        for r in range(len(done), rounds):
            result = evolve_round.with_options(flow_run_name=f"round-{r}")(config_path, evolve_id, r, policy, str(root), overrides)
            record["rounds"] = [x for x in record["rounds"] if x["round"] != r] + [{**result, "finished": True}]
            atomic_write_text(path, json.dumps(record, indent=2, default=str))
            policy = result["next_policy"]
        record["comparison"] = compare_rounds(root, record)
        record["report"] = str(write_evolve_report(root, record))
        atomic_write_text(path, json.dumps(record, indent=2, default=str))
    create_markdown_artifact(key="sphere-evolve-report", markdown=evolve_markdown(record), description=f"Self-evolution {evolve_id}")
    return record


def accuracy_by_round(record: dict) -> list[dict]:
    """Greedy held-out accuracy of each round's model: round 0 = the starting policy."""
    rows = {}
    for rnd in record["rounds"]:
        for e in rnd["evals"]:
            if e["metric"] == "greedy":
                rows[e["round"]] = {"round": e["round"], "model": e["model"], "accuracy": e["value"], "ci_low": e["ci_low"],
                                    "ci_high": e["ci_high"], "n": e["n"]}
    return [rows[k] for k in sorted(rows)]


def compare_rounds(root: Path, record: dict) -> dict:
    """Paired McNemar of the last round's model against round 0's policy on the same held-out problems."""
    items = []
    for rnd in record["rounds"]:
        items += RunStore(root, rnd["run_id"]).read_table("eval_items").to_pylist()
    by_round: dict[int, dict[str, bool]] = {}
    for it in items:
        by_round.setdefault(it["round"], {})[it["problem_id"]] = it["correct"]
    if len(by_round) < 2:
        return {}
    first, last = min(by_round), max(by_round)
    return {"from_round": first, "to_round": last, **mcnemar(by_round[first], by_round[last])}


def evolve_markdown(record: dict) -> str:
    lines = [f"# Self-evolution `{record['evolve_id']}`", "", "| round | model | held-out accuracy | 95% CI | n |", "|---|---|---|---|---|"]
    lines += [f"| {a['round']} | {a['model']} | {a['accuracy']:.3f} | [{a['ci_low']:.3f}, {a['ci_high']:.3f}] | {a['n']} |"
              for a in accuracy_by_round(record)]
    c = record.get("comparison") or {}
    if c:
        lines += ["", f"McNemar round {c['from_round']} vs {c['to_round']}: {c['b_only']} problems fixed, {c['a_only']} broken, "
                  f"p = {c['p_value']:.2g} (n = {c['n']})"]
    lines += ["", f"Report: `{record.get('report', '')}`"]
    return "\n".join(lines)
