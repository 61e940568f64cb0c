"""The ``train`` stage: preference optimisation of the run's policy on the run's pairs.

With ``train.replay_runs`` (``sphere evolve`` sets it: ``evolve.accumulate``) the rows of
those earlier runs are trained on too, before this run's in the input order.

``train_policy(pairs, sft, section, policy_dir=, out_dir=)`` runs the trainer the section
names (``infra.trainers``: ``tiny`` or ``trl``; methods ``dpo``, ``rpo``, ``sft``) with the
run's starting policy as both the initial weights and the frozen reference. The wrapper
puts the trainer's work (per-epoch checkpoints, ``train_log.jsonl``) in
``<run>/models/train/<model_id>-<key>.work/``, keyed by the train config and the input pairs
(a killed training resumes there from its last epoch checkpoint; a changed config trains
afresh in a new one and the stale one is removed), copies the final checkpoint to ``<run>/models/train/<model_id>/`` (a
standard Hugging Face directory; the next round's policy) and commits ``train_log`` (per
step, and per epoch on the held-out pairs) and ``models`` (the checkpoint and its lineage).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.backends.tiny import NAMED
from infra.config import TrainConfig
from infra.fs import StorePath, cache_root, is_uri, localize
from infra.schemas import from_rows, stable_id
from infra.storage import RunNotFound, RunStore, atomic_write_dir
from infra.trainers import TrainError, TrainJob, TrainResult, train
from tasks.common import RunContext

STAGE = "train"


def policy_checkpoint(policy) -> Path:
    """The local Hugging Face checkpoint directory of a policy backend (what training starts from)."""
    if policy.kind == "tiny":
        return NAMED.get(policy.checkpoint) or Path(localize(policy.checkpoint))
    if policy.kind == "vllm":
        return Path(localize(policy.model))
    raise TrainError(f"training needs the policy as a local Hugging Face checkpoint; a {policy.kind!r} backend has none "
                     "(train a tiny or vllm policy)")


def _source(policy) -> str:
    """The policy's checkpoint as the run names it (a path or an object-store URI)."""
    return str(policy.checkpoint if policy.kind == "tiny" else getattr(policy, "model", ""))


def trained_backend(policy, path: str | Path):
    """The policy's backend config serving the checkpoint at ``path`` instead."""
    if policy.kind == "tiny":
        return policy.model_copy(update={"checkpoint": str(path)})
    if policy.kind == "vllm":
        return policy.model_copy(update={"model": str(path)})
    raise TrainError(f"a {policy.kind!r} backend cannot serve a local checkpoint")


def model_id(run_id: str, round: int) -> str:
    """The id (and checkpoint directory name) of the model trained on ``run_id``'s data in ``round``."""
    return f"m{round + 1}-{stable_id('model', run_id, round)[:8]}"


def work_dir(base: Path, mid: str, fingerprint: dict) -> Path:
    """The trainer's work directory for this config and these inputs, ``<mid>-<key>.work``
    (a killed training with the same ones resumes there); the work directories of other
    configs or inputs of the same model are stale and removed."""
    key = hashlib.sha256(json.dumps([fingerprint["config"], fingerprint["inputs"]]).encode()).hexdigest()[:8]
    out = base / f"{mid}-{key}.work"
    for stale in base.glob(f"{mid}*.work"):
        if stale != out:
            shutil.rmtree(stale, ignore_errors=True)
    return out


PAIR_COLUMNS = ["prompt", "chosen", "rejected", "problem_id", "stage", "margin"]


def training_pairs(pairs: pa.Table, step_pairs: pa.Table, level: str, separator: str) -> pa.Table:
    """The preference pairs ``train.pair_level`` trains on: ``chain`` the run's ``pairs``,
    ``step`` its ``step_pairs``, ``both`` the two together (chain pairs first). A step pair's
    chosen and rejected are its step followed by ``separator`` and marked ``continues`` (the
    trainer adds no end-of-sequence token: the policy goes on after a step; with one, RPO's
    NLL term taught tiny-small to stop after one step and broke 1,187 of 2,000 held-out
    problems its parent solved); its margin is the chosen minus the rejected step score."""
    n = step_pairs.num_rows
    steps = pa.table({
        "prompt": step_pairs.column("prompt"),
        "chosen": pa.compute.binary_join_element_wise(step_pairs.column("chosen"), pa.array([separator] * n, pa.string()), ""),
        "rejected": pa.compute.binary_join_element_wise(step_pairs.column("rejected"), pa.array([separator] * n, pa.string()), ""),
        "problem_id": step_pairs.column("problem_id"),
        "stage": step_pairs.column("stage"),
        "margin": pa.compute.subtract(step_pairs.column("chosen_score"), step_pairs.column("rejected_score")),
        "continues": pa.array([True] * n, pa.bool_()),
    })
    chains = pairs.select(PAIR_COLUMNS).append_column("continues", pa.array([False] * pairs.num_rows, pa.bool_()))
    parts = {"chain": [chains], "step": [steps], "both": [chains, steps]}[level]
    return pa.concat_tables([p.cast(chains.schema) for p in parts])


def replay_stores(store: RunStore, run_ids: list[str]) -> list[RunStore]:
    """The stores of ``train.replay_runs`` (same data root as ``store``); ``TrainError`` naming
    the run and the folder when one does not exist or is this run itself."""
    out = []
    for rid in run_ids:
        if rid == store.run_id:
            raise TrainError(f"train.replay_runs names this run itself ({rid}); it lists earlier runs only")
        try:
            out.append(RunStore.open(store.data_root, rid))
        except RunNotFound as e:
            raise TrainError(f"train.replay_runs: {e}") from None
    return out


def train_policy(pairs: pa.Table, sft: pa.Table, section: TrainConfig, *, policy_dir: Path, out_dir: Path,
                 policy_source: str | None = None, publish_to: str | None = None) -> TrainResult:
    """Train from ``policy_dir`` (also the reference) on ``pairs`` / ``sft``; see ``infra.trainers``
    (``policy_source`` / ``publish_to``: an object-store data root, ``TrainJob``)."""
    return train(TrainJob(policy_dir=policy_dir, reference_dir=policy_dir, pairs=pairs, sft=sft, cfg=section, out_dir=out_dir,
                          policy_source=policy_source, publish_to=publish_to))


@task(name=STAGE, task_run_name=STAGE + "-{shard}", cache_policy=NO_CACHE)
def train_task(run_dir: str, shard: str, config_hash: str) -> str:
    """Train the next policy on the run's pairs -> ``train_log``, ``models`` and the checkpoint."""
    ctx = RunContext.open(run_dir)
    cfg = ctx.cfg
    store = ctx.store
    inputs = [("pairs", None), ("sft", None), ("step_pairs", None)]
    replay = replay_stores(store, cfg.train.replay_runs)
    fp = ctx.fingerprint(__name__, config_hash, inputs)
    if replay:  # the replayed runs' committed rows are inputs too: a rerun of one of them retrains
        fp["replay"] = {r.run_id: r.content_hash(inputs) for r in replay}
    if not ctx.is_done(STAGE, shard, fp):
        mid = model_id(ctx.run_id, cfg.round)
        base = store.run_dir / "models" / STAGE
        # the trainer writes local files: on an object-store root its work folder is in this host's
        # cache and only the final checkpoint goes to the store
        work = (cache_root() / "work" / hashlib.sha256(str(base).encode()).hexdigest()[:16]) if isinstance(base, StorePath) else base
        policy_dir = policy_checkpoint(cfg.policy)
        sources = [*replay, store]  # earlier rounds' rows first, then this run's
        pairs = pa.concat_tables([training_pairs(s.read_table("pairs"), s.read_table("step_pairs"), cfg.train.pair_level,
                                                 cfg.search.step_separator) for s in sources])
        sft = pa.concat_tables([s.read_table("sft") for s in sources], promote_options="default")
        dest = base / mid
        on_store = isinstance(dest, StorePath)
        source = _source(cfg.policy)
        result = train_policy(pairs, sft, cfg.train, policy_dir=policy_dir, out_dir=work_dir(work, mid, fp),
                              policy_source=source if on_store and is_uri(source) else None,
                              publish_to=str(dest) if on_store else None)
        if not result.published:  # a trainer in this process (or on a folder root): copied into place here
            atomic_write_dir(dest, lambda tmp: shutil.copytree(result.final_dir, tmp, dirs_exist_ok=True))
        n = result.n_train + result.n_val  # training examples: pairs, or SFT rows for method sft
        examples = {"pairs": 0, "sft_rows": n} if cfg.train.method == "sft" else {"pairs": n, "sft_rows": 0}
        log = from_rows([{"run_id": ctx.run_id, "model_id": mid, **r} for r in result.rows], "train_log")
        model = {"run_id": ctx.run_id, "evolve_id": cfg.evolve_id, "model_id": mid, "round": cfg.round, "path": str(dest),
                 "parent_model": str(policy_dir), "trainer": cfg.train.kind, "method": cfg.train.method,
                 "train_config_hash": config_hash, **examples,
                 "steps": result.steps, "seconds": result.seconds}
        ctx.commit(STAGE, shard, {"train_log": log, "models": from_rows([model], "models")}, fp)
    return str(store.part_path("models", STAGE, shard))
