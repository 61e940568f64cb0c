"""Self-evolution (``sphere evolve``): round r runs every stage with policy_r, trains
policy_{r+1} on round r's training rows (reference = policy_r) and, with ``evolve.accumulate``,
on those of rounds 0..r-1 too (the round's ``train.replay_runs``), evaluates it on held-out
problems and hands it to round r+1.

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

Every round runs with the validated config the record stored when the evolve started
(``tasks.evolve_record``); a resume with another config is refused unless allowed, and then
recorded. A round's model becomes the next policy only if its training did not diverge, its
weights are finite and (``evolve.require_not_worse``) it is not significantly worse than its
parent on the held-out problems; otherwise the evolve stops with one message and the record
keeps the parent as ``policy``.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.pipeline import StageFailed, sphere_run
from flows.run_ids import bound_or_new_id, new_run_id
from infra import progress
from infra.config import RunConfig, load_config
from infra.locks import writer_lock
from infra.storage import RunStore, atomic_write_text, read_json
from infra.trainers import TrainDiverged
from infra.trainers.base import nonfinite_weight
from tasks.evaluate import is_ood, mcnemar
from tasks.evolve_record import promotion_refusal, round_overrides, settle_config
from tasks.evolve_report import reference_evals, write_evolve_report
from tasks.train import policy_checkpoint, trained_backend
from infra.fs import as_path


class EvolveError(ValueError):
    """An evolve cannot start or go on (bad rounds, a round that trained no model)."""


class RoundRejected(EvolveError):
    """A round's model is not promoted (its training diverged, its weights are not finite, or it
    is significantly worse than its parent): the evolve stops and its record keeps the parent.
    ``entry``: what the round produced before it was stopped (run, model, evals), for the record."""

    def __init__(self, message: str, entry: dict | None = None):
        super().__init__(message)
        self.entry = entry or {}


REPAIR = "it lists the evolve's finished rounds: restore it, or start a new evolve (the rounds' runs are kept under runs/)"


def new_evolve_id(name: str) -> str:
    return new_run_id(f"{name}-evolve")


def _record_path(root: Path, evolve_id: str) -> Path:
    return root / "evolve" / f"{evolve_id}.json"


def _policy_name(policy: dict) -> str:
    return f"{policy.get('kind')}:{policy.get('checkpoint') or policy.get('model') or ''}"


def _diverged(e: BaseException) -> TrainDiverged | None:
    """The ``TrainDiverged`` behind a failed round's run (its train stage's failure), if any."""
    return next((c for c in getattr(e, "causes", ()) if isinstance(c, TrainDiverged)), None)


def _items(root: Path, run_id: str, ood: bool = False) -> list[dict]:
    """A round's eval_items of the in-distribution (or ``ood``) held-out set."""
    store = RunStore(root, run_id)
    rows = store.read_table("eval_items").to_pylist() if store.exists() else []
    return [i for i in rows if is_ood(i.get("dataset") or "") == ood]


def _refusal(root: Path, evolve_id: str, round: int, model: dict, cfg: RunConfig) -> str | None:
    """Why the round's model must not become the next policy (None: promote it)."""
    bad = nonfinite_weight(Path(model["path"]))
    if bad is not None:
        return f"model {model['model_id']} has non-finite weights ({bad})"
    if not cfg.evolve.require_not_worse:
        return None
    items = _items(root, f"{evolve_id}-r{round}") + (_items(root, f"{evolve_id}-r{round - 1}") if round else [])
    parent = {i["problem_id"]: i["correct"] for i in items if i["round"] == round}
    child = {i["problem_id"]: i["correct"] for i in items if i["round"] == round + 1}
    why = promotion_refusal(parent, child, cfg.evolve.worse_alpha)
    return f"model {model['model_id']}: {why}" if why else None


def round_seeds(run_config: dict, round: int) -> dict:
    """The seeds override of round ``round`` (``evolve.new_seeds``): built-in seeds with generator
    seed ``seeds.seed + round``, so every round searches problems no earlier round saw; ``{}``
    when the rounds share their problems."""
    if not run_config.get("evolve", {}).get("new_seeds", True):
        return {}
    seeds = run_config["seeds"]
    if seeds.get("kind") != "builtin":
        raise EvolveError("evolve.new_seeds draws each round's problems from the built-in generator; with file seeds set "
                          "evolve.new_seeds: false (every round then searches the same problems)")
    return {"seeds": {**seeds, "seed": seeds["seed"] + round}}


def replay_runs(run_config: dict, evolve_id: str, round: int) -> dict:
    """The training-data override of round ``round`` (``evolve.accumulate``): the runs of rounds
    0..round-1 are replayed, so round r trains on every round's rows so far; ``{}`` when off."""
    if not (run_config.get("evolve") or {}).get("accumulate", False):  # a record from before the setting: off
        return {}
    return {"train.replay_runs": [f"{evolve_id}-r{r}" for r in range(round)]}


@flow(name="evolve-round", flow_run_name="round-{round}")
def evolve_round(run_config: dict, evolve_id: str, round: int, policy: dict, data_root: str) -> dict:
    """One round: the factory run with ``policy`` under the evolve's stored config, training and
    evaluation; returns the round's record. ``RoundRejected`` when the model is not promoted."""
    run_id = f"{evolve_id}-r{round}"
    run = RunStore(as_path(data_root), run_id)
    sets = round_overrides(run_config, {"train.enabled": True, "evaluate.enabled": True, "round": round, "evolve_id": evolve_id,
                                        "policy": policy, **round_seeds(run_config, round), **replay_runs(run_config, evolve_id, round)},
                           run.load_config() if run.exists() else None)
    stop = f"round {round} ({run_id})"
    keep = f"the model is not promoted and the policy stays {_policy_name(policy)}"
    try:
        summary = sphere_run(config_path=None, run_id=run_id, data_root=data_root, overrides=sets)
    except StageFailed as e:
        if (diverged := _diverged(e)) is not None:
            raise RoundRejected(f"{stop}: {diverged}; {keep}") from None
        raise
    root = as_path(data_root)
    store = RunStore(root, run_id)
    models = store.read_table("models", "train").to_pylist()
    if not models:
        raise EvolveError(f"round {round} ({run_id}) trained no model; see its train_log and pairs")
    evals = store.read_table("evals").to_pylist()
    cfg = RunConfig.model_validate(store.load_config())
    shown = ("round", "model", "metric", "value", "ci_low", "ci_high", "n", "overlap_removed")
    create_table_artifact(key=f"sphere-evolve-round-{round}", table=[{k: e.get(k) for k in shown} for e in evals],
                          description=f"Held-out accuracy, round {round} of {evolve_id}")
    result = {"round": round, "run_id": run_id, "policy": policy, "model": models[0], "evals": evals,
              "counts": summary["counts"], "pairs_by_stage": summary["pairs_by_stage"], "frontier": frontier_share(store)}
    why = _refusal(root, evolve_id, round, models[0], cfg)
    if why:
        raise RoundRejected(f"{stop}: {why}; {keep}", result)
    return {**result, "next_policy": trained_backend(cfg.policy, models[0]["path"]).model_dump(mode="json")}


def frontier_share(store: RunStore) -> dict | None:
    """``{"problems", "kept", "share"}`` of the round's frontier filter (evolve.frontier), None when off."""
    rows = store.read_table("frontier", "generation")
    if rows.num_rows == 0:
        return None
    kept = sum(rows.column("kept").to_pylist())
    return {"problems": rows.num_rows, "kept": kept, "share": kept / rows.num_rows}


def _evolve_config(config_path: str, overrides: dict | None) -> RunConfig:
    """An evolve's validated config: every round trains and evaluates."""
    return load_config(config_path, {**(overrides or {}), "train.enabled": True, "evaluate.enabled": True})


def _evolve_id(name: str, evolve_id: str | None) -> str:
    """``evolve_id``, else inside a flow run (a deployment's scheduled run) an id derived from
    the flow run's id, ``<name>-evolve-fr<id>``, so ``prefect flow-run retry`` resumes the same
    evolve; else a new id (the rule of every id: ``flows.run_ids``)."""
    return evolve_id or bound_or_new_id(f"{name}-evolve")


def _evolve_name() -> str:
    """The ``sphere-evolve`` flow run's name: the evolve id it writes its record under (as
    ``sphere evolve --resume`` takes it). ``evolve-new`` only when the config cannot be read;
    the flow run then fails with the config's error."""
    from prefect.runtime import flow_run

    params = flow_run.parameters
    if params.get("evolve_id"):
        return params["evolve_id"]
    try:
        name = _evolve_config(params["config_path"], params.get("overrides")).name
    except Exception:  # noqa: BLE001 - a name must not fail the run before the flow reports why
        return "evolve-new"
    return _evolve_id(name, None)


def _write(path: Path, record: dict) -> None:
    atomic_write_text(path, json.dumps(record, indent=2, default=str))


@flow(name="sphere-evolve", flow_run_name=_evolve_name)
def sphere_evolve(config_path: str, rounds: int = 2, evolve_id: str | None = None, data_root: str | None = None,
                  overrides: dict | None = None, allow_config_change: bool = False) -> dict:
    """Run ``rounds`` rounds (resuming an existing ``evolve_id``: finished rounds are kept).
    Without an ``evolve_id`` (a deployment's scheduled run) the id comes from the flow run,
    so ``prefect flow-run retry`` resumes the same evolve.

    Every round runs with the config stored in the record when the evolve started; a resume
    with another config raises ``EvolveConfigChanged`` unless ``allow_config_change`` (then the
    change is recorded with the round it applies from). A round whose model is not promoted
    raises ``RoundRejected`` after the record is written with ``stopped`` (why) and ``policy``
    (the parent, still the current policy)."""
    if rounds < 1:
        raise EvolveError(f"--rounds must be at least 1, got {rounds}")
    cfg = _evolve_config(config_path, overrides)  # validated before any work
    round_seeds(cfg.model_dump(mode="json"), 0)  # file seeds with new_seeds: refused before any work
    evolve_id = _evolve_id(cfg.name, evolve_id)
    root = as_path(data_root or cfg.data_root).resolve()
    path = _record_path(root, evolve_id)
    with writer_lock(path.with_suffix(".lock"), f"evolve {evolve_id}"):  # one writer per evolve: WriterLocked names the other
        record = read_json(path, REPAIR) if path.is_file() else {"evolve_id": evolve_id, "config": config_path,
                                                                 "overrides": overrides or {}, "rounds": []}
        done = [r for r in record["rounds"] if r.get("finished")]
        settle_config(record, cfg.model_dump(mode="json"), allow=allow_config_change, next_round=len(done))
        cfg = RunConfig.model_validate(record["run_config"])
        start = policy_checkpoint(cfg.policy)
        if not start.is_dir():
            raise EvolveError(f"the starting policy's checkpoint {start} is not a directory (a Hugging Face checkpoint is needed to train)")
        policy = done[-1]["next_policy"] if done else cfg.policy.model_dump(mode="json")
        record["policy"] = policy
        _write(path, record)  # so --resume finds an evolve killed in its first round
        for r in range(len(done), rounds):
            progress.report("round", r, rounds)
            try:
                result = evolve_round.with_options(flow_run_name=f"round-{r}")(record["run_config"], evolve_id, r, policy, str(root))
            except RoundRejected as e:
                entry = {"round": r, "run_id": f"{evolve_id}-r{r}", "policy": policy, **e.entry, "config_hash": record["config_hash"],
                         "finished": False, "promoted": False, "stopped": str(e), "next_policy": policy}
                record["rounds"] = [x for x in record["rounds"] if x["round"] != r] + [entry]
                record.update(policy=policy, stopped=str(e))
                _write(path, record)
                raise
            record["rounds"] = [x for x in record["rounds"] if x["round"] != r] + [
                {**result, "config_hash": record["config_hash"], "finished": True, "promoted": True}]
            policy = result["next_policy"]
            record["policy"] = policy
            record.pop("stopped", None)
            _write(path, record)
        progress.report("round", rounds, rounds)
        record["comparison"] = compare_rounds(root, record)
        record["comparisons"] = round_by_round(_correct_by_round(root, record))
        record["comparisons_ood"] = round_by_round(_correct_by_round(root, record, ood=True))
        record["report"] = str(write_evolve_report(root, record))
        _write(path, record)
    create_markdown_artifact(key="sphere-evolve-report", markdown=evolve_markdown(record), description=f"Self-evolution {evolve_id}")
    return record


def _accuracy(e: dict) -> dict:
    return {"round": e["round"], "model": e["model"], "dataset": e.get("dataset") or "", "accuracy": e["value"], "ci_low": e["ci_low"],
            "ci_high": e["ci_high"], "n": e["n"]}


def accuracy_by_round(record: dict, ood: bool = False) -> list[dict]:
    """Greedy held-out accuracy of each round's model (round 0 = the starting policy) on the
    in-distribution held-out set, or (``ood``) the out-of-distribution one."""
    rows = {}
    for rnd in record["rounds"]:
        for e in rnd.get("evals", []):
            if e["metric"] == "greedy" and e["round"] >= 0 and is_ood(e.get("dataset") or "") == ood:
                rows[e["round"]] = _accuracy(e)
    return [rows[k] for k in sorted(rows)]


def reference_accuracy(record: dict) -> list[dict]:
    """The reference model's (``evaluate.reference``) greedy accuracy on each held-out set
    (in-distribution first)."""
    return [_accuracy(e) for _, e in sorted(reference_evals(record).items())]


def _correct_by_round(root: Path, record: dict, ood: bool = False) -> dict[int, dict[str, bool]]:
    by_round: dict[int, dict[str, bool]] = {}
    for rnd in record["rounds"]:
        for it in _items(root, rnd["run_id"], ood):
            if it["round"] >= 0:
                by_round.setdefault(it["round"], {})[it["problem_id"]] = it["correct"]
    return by_round


def round_by_round(by_round: dict[int, dict[str, bool]]) -> list[dict]:
    """Paired McNemar of each model against the one before it (model r+1, trained in round r,
    against model r, which round r started from), on the problems both were evaluated on."""
    ks = sorted(by_round)
    return [{"from_round": a, "to_round": b, **mcnemar(by_round[a], by_round[b])} for a, b in zip(ks, ks[1:])]


def compare_rounds(root: Path, record: dict) -> dict:
    """Paired McNemar of the last round's model against round 0's policy on the same held-out problems."""
    by_round = _correct_by_round(root, record)
    if len(by_round) < 2:
        return {}
    first, last = min(by_round), max(by_round)
    return {"from_round": first, "to_round": last, **mcnemar(by_round[first], by_round[last])}


def evolve_markdown(record: dict) -> str:
    lines = [f"# Self-evolution `{record['evolve_id']}`", "", "| round | model | held-out accuracy | 95% CI | n | OOD accuracy | 95% CI |",
             "|---|---|---|---|---|---|---|"]
    ood = {a["round"]: a for a in accuracy_by_round(record, ood=True)}
    for a in accuracy_by_round(record):
        o = ood.get(a["round"])
        lines.append(f"| {a['round']} | {a['model']} | {a['accuracy']:.3f} | [{a['ci_low']:.3f}, {a['ci_high']:.3f}] | {a['n']} | "
                     + (f"{o['accuracy']:.3f} | [{o['ci_low']:.3f}, {o['ci_high']:.3f}] |" if o else "| |"))
    lines += [f"- reference {r['model']} on {r['dataset']}: {r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
              for r in reference_accuracy(record)]
    lines += [f"- model {c['to_round']} vs model {c['from_round']}: {c['b_only']} fixed, {c['a_only']} broken, p = {c['p_value']:.2g}"
              for c in record.get("comparisons", [])]
    c = record.get("comparison") or {}
    if c:
        lines += ["", f"McNemar round {c['from_round']} vs {c['to_round']}: {c['b_only']} problems fixed, {c['a_only']} broken, "
                  f"p = {c['p_value']:.2g} (n = {c['n']})"]
    lines += ["", f"Report: `{record.get('report', '')}`"]
    return "\n".join(lines)
