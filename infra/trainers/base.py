"""What every trainer shares: the job, the result, the data preparation, the output folder.

Contract of a trainer (``Trainer.train(job) -> TrainResult``):

* The pairs are filtered (``cfg.pair_stages``, ``cfg.min_margin``) and split by a hash of
  ``problem_id`` (``cfg.val_share``) BEFORE any work; an empty training set raises
  ``TrainError`` then (``prepare``).
* ``out_dir/epoch-<k>/`` (k = 1, 2, ...) is a Hugging Face checkpoint directory written
  atomically after epoch k; ``out_dir/final/`` is written last. A directory that exists
  is complete.
* Per-step rows ``{step, epoch, loss, reward_accuracy, margin, chosen_logp,
  rejected_logp, split="train"}`` and, after each epoch, one ``split="val"`` row over the
  held-out pairs are appended to ``out_dir/train_log.jsonl`` as they come and returned.
  A metric that a method does not compute is ``None``.
* Called again with the same job, a trainer resumes after its last complete epoch
  checkpoint (rows of later epochs are dropped from the log and recomputed); with
  ``final/`` present it does no work and returns the logged result. ``out_dir`` records
  the job's fingerprint (``job.json``); another job in the same ``out_dir`` raises
  ``TrainError``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from infra.config import TrainConfig
from infra.storage import atomic_write_text

Rows = list[dict] | pa.Table
PAIR_COLUMNS = ("prompt", "chosen", "rejected")
SFT_COLUMNS = ("prompt", "completion")
ROW_KEYS = ("step", "epoch", "loss", "reward_accuracy", "margin", "chosen_logp", "rejected_logp", "split")
EPOCH_DIR = re.compile(r"^epoch-(\d+)$")
LOG_NAME = "train_log.jsonl"
JOB_NAME = "job.json"


class TrainError(RuntimeError):
    """A training job cannot run: no pairs left after the filters, missing columns, an
    ``out_dir`` that belongs to another job, a missing optional dependency."""


class TrainDiverged(TrainError):
    """The loss or the weights stopped being finite: the training diverged (too high a
    learning rate, most often). The message names the step."""


@dataclass(frozen=True, kw_only=True)
class TrainJob:
    """One training run.

    ``policy_dir``: Hugging Face checkpoint to start from. ``reference_dir``: checkpoint of
    the frozen reference policy (the round's starting policy; usually ``policy_dir``).
    ``pairs``: rows with ``prompt, chosen, rejected`` and, used when present,
    ``problem_id`` (split key; the prompt stands in when absent), ``stage`` (filtered by
    ``cfg.pair_stages``; rows without it are kept) and ``margin`` (filtered by
    ``cfg.min_margin``; a missing margin is then dropped) and ``continues`` (true: the
    completions are one step the policy goes on after, trained without an end-of-sequence
    token; the ``trl`` trainer refuses them). ``sft``: rows with ``prompt,
    completion`` (+ ``problem_id``), read when ``cfg.method == "sft"`` and
    ``cfg.sft_source == "sft"``. ``out_dir``: where checkpoints and the log go.

    With an object-store data root (a trainer that may run on another host than the driver):
    ``policy_source``, the starting checkpoint as the run names it (an ``s3://`` URI, copied
    to the trainer's host with ``infra.fs.localize``; None: ``policy_dir`` is valid there), and
    ``publish_to``, the store folder the trainer uploads the final checkpoint to from its own
    host (``TrainResult.published``); its epoch checkpoints stay on that host.
    """

    policy_dir: Path
    reference_dir: Path
    pairs: Rows
    sft: Rows | None = None
    cfg: TrainConfig = field(default_factory=TrainConfig)
    out_dir: Path
    policy_source: str | None = None
    publish_to: str | None = None


@dataclass(frozen=True)
class TrainResult:
    """``final_dir``: the trained checkpoint. ``epoch_dirs``: complete epoch checkpoints in
    order. ``rows``: the whole log (train steps and val epochs, in order). ``n_train`` /
    ``n_val``: training and held-out examples (pairs, or SFT rows for method sft).
    ``steps``: optimizer steps in all. ``resumed_from_epoch``: the epoch checkpoint this
    call started from (0: from ``policy_dir``; -1: nothing to do, ``final/`` existed).
    ``seconds``: wall time of this call; ``step_seconds``: mean wall time of the steps this
    call ran (None if it ran none)."""

    final_dir: Path
    epoch_dirs: list[Path]
    rows: list[dict]
    n_train: int
    n_val: int
    steps: int
    resumed_from_epoch: int
    seconds: float
    step_seconds: float | None = None
    published: bool = False  # the trainer uploaded final_dir to the job's publish_to itself


class Trainer(Protocol):
    def train(self, job: TrainJob) -> TrainResult:
        """Run ``job`` to ``job.out_dir/final`` (see the module contract)."""


@dataclass(frozen=True)
class TrainData:
    """The job's examples after filters and split. Pairs are dicts with ``prompt, chosen,
    rejected``; SFT rows dicts with ``prompt, completion`` (empty unless method sft)."""

    train_pairs: list[dict]
    val_pairs: list[dict]
    train_sft: list[dict]
    val_sft: list[dict]

    def examples(self, method: str) -> tuple[list[dict], list[dict]]:
        """(train, val) examples the method's loss is taken on: SFT rows for sft, else pairs."""
        return (self.train_sft, self.val_sft) if method == "sft" else (self.train_pairs, self.val_pairs)

    def digest(self) -> str:
        blob = json.dumps([self.train_pairs, self.val_pairs, self.train_sft, self.val_sft], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


def _rows(rows: Rows | None) -> list[dict]:
    if rows is None:
        return []
    return rows.to_pylist() if isinstance(rows, pa.Table) else list(rows)


def in_val(key: str, share: float) -> bool:
    """Whether a problem id falls in the held-out share (a pure function of the id)."""
    if share <= 0:
        return False
    h = int.from_bytes(hashlib.sha256(str(key).encode()).digest()[:8], "big")
    return h / 2**64 < share


def _key(row: dict) -> str:
    pid = row.get("problem_id")
    return str(pid) if pid is not None else str(row["prompt"])


def _check_columns(rows: list[dict], columns: tuple[str, ...], what: str) -> None:
    for i, r in enumerate(rows):
        missing = [c for c in columns if not isinstance(r.get(c), str)]
        if missing:
            raise TrainError(f"{what} row {i} lacks text column(s) {missing}; expected {list(columns)}")


def prepare(job: TrainJob) -> TrainData:
    """Filter and split the job's examples; raise ``TrainError`` if nothing is left to train on."""
    cfg = job.cfg
    given = _rows(job.pairs)
    _check_columns(given, PAIR_COLUMNS, "pairs")
    stages = set(cfg.pair_stages)
    staged = [r for r in given if r.get("stage") is None or r["stage"] in stages]
    kept = staged if cfg.min_margin is None else [r for r in staged if r.get("margin") is not None and r["margin"] >= cfg.min_margin]
    pairs = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"], "key": _key(r),
              **({"continues": True} if r.get("continues") else {})} for r in kept]
    val_pairs = [p for p in pairs if in_val(p["key"], cfg.val_share)]
    train_pairs = [p for p in pairs if not in_val(p["key"], cfg.val_share)]
    counts = (f"{len(given)} pair rows given, {len(staged)} in pair_stages {cfg.pair_stages}, "
              f"{len(kept)} with margin >= {cfg.min_margin}, {len(train_pairs)} outside the val_share={cfg.val_share} split")
    train_sft: list[dict] = []
    val_sft: list[dict] = []
    if cfg.method == "sft":
        if cfg.sft_source == "chosen":
            seen: set[tuple[str, str]] = set()
            sft = []
            for p in pairs:
                if (p["prompt"], p["chosen"]) not in seen:
                    seen.add((p["prompt"], p["chosen"]))
                    sft.append({"prompt": p["prompt"], "completion": p["chosen"], "key": p["key"],
                                **({"continues": True} if p.get("continues") else {})})
        else:
            given_sft = _rows(job.sft)
            _check_columns(given_sft, SFT_COLUMNS, "sft")
            sft = [{"prompt": r["prompt"], "completion": r["completion"], "key": _key(r)} for r in given_sft]
            counts = f"{len(given_sft)} sft rows given"
        val_sft = [r for r in sft if in_val(r["key"], cfg.val_share)]
        train_sft = [r for r in sft if not in_val(r["key"], cfg.val_share)]
        if not train_sft:
            raise TrainError(f"nothing to train on (method sft, sft_source {cfg.sft_source}): {counts}")
    elif not train_pairs:
        raise TrainError(f"no training pairs (method {cfg.method}): {counts}")
    return TrainData(train_pairs, val_pairs, train_sft, val_sft)


# ---------------------------------------------------------------- divergence


def check_loss(step: int, loss: float) -> None:
    """``TrainDiverged`` naming ``step`` when its loss is not finite."""
    if not math.isfinite(loss):
        raise TrainDiverged(f"training diverged at step {step}: loss {loss}; no checkpoint of this epoch was written "
                            "(lower train.lr)")


def check_weights(step: int, parameters) -> None:
    """``TrainDiverged`` naming ``step`` when any weight is not finite after its update."""
    import torch

    with torch.no_grad():
        bad = next((n for n, p in parameters if not bool(torch.isfinite(p).all())), None)
    if bad is not None:
        raise TrainDiverged(f"training diverged at step {step}: weight {bad} is not finite after the update; no "
                            "checkpoint of this epoch was written (lower train.lr)")


def nonfinite_weight(checkpoint_dir: Path) -> str | None:
    """The name of the first tensor of a Hugging Face checkpoint (``*.safetensors``) that holds a
    NaN or an infinity, as ``file:tensor``; None when every weight is finite."""
    import torch
    from safetensors import safe_open

    for f in sorted(Path(checkpoint_dir).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                t = st.get_tensor(name)
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    return f"{f.name}:{name}"
    return None


# ---------------------------------------------------------------- the output folder


def row(step: int, epoch: int, split: str, loss: float, **metrics: Any) -> dict:
    """One log row with every key of ``ROW_KEYS`` (missing metrics are None)."""
    out = {k: None for k in ROW_KEYS}
    out.update(step=step, epoch=epoch, split=split, loss=float(loss))
    out.update({k: (None if v is None else float(v)) for k, v in metrics.items() if k in ROW_KEYS})
    return out


def epoch_dirs(out_dir: Path, epochs: int) -> list[Path]:
    """Complete epoch checkpoints ``epoch-1 .. epoch-k`` (contiguous from 1, k <= epochs)."""
    found = {int(m.group(1)) for p in Path(out_dir).glob("epoch-*") if (m := EPOCH_DIR.match(p.name)) and p.is_dir()}
    k = 0
    while k + 1 in found and k + 1 <= epochs:
        k += 1
    return [Path(out_dir) / f"epoch-{i}" for i in range(1, k + 1)]


def fingerprint(job: TrainJob, data: TrainData, kind: str) -> str:
    blob = {
        "kind": kind,
        "cfg": job.cfg.model_dump(mode="json"),
        "policy": str(Path(job.policy_dir).resolve()),
        "reference": str(Path(job.reference_dir).resolve()),
        "data": data.digest(),
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


class TrainLog:
    """``out_dir/train_log.jsonl``: rows appended (and flushed) as they come."""

    def __init__(self, out_dir: Path, keep_epochs: int):
        """Open the log, keeping only the rows of epochs <= ``keep_epochs`` (rewritten atomically)."""
        self.path = Path(out_dir) / LOG_NAME
        self.rows = [r for r in read_log(out_dir) if r["epoch"] <= keep_epochs]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))
        self._f = open(self.path, "a", encoding="utf-8")

    def add(self, r: dict) -> None:
        self.rows.append(r)
        self._f.write(json.dumps(r) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read_log(out_dir: Path) -> list[dict]:
    p = Path(out_dir) / LOG_NAME
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def claim(out_dir: Path, fp: str) -> None:
    """Record the job's fingerprint in ``out_dir``; raise ``TrainError`` if another job's is there."""
    out_dir = Path(out_dir)
    path = out_dir / JOB_NAME
    if path.exists():
        have = json.loads(path.read_text(encoding="utf-8")).get("fingerprint")
        if have != fp:
            raise TrainError(f"{out_dir} holds training output of another job (fingerprint {have}, this job {fp}); "
                             "use a new out_dir or delete it")
        return
    if out_dir.exists() and any(out_dir.iterdir()):
        raise TrainError(f"{out_dir} is not empty and has no {JOB_NAME}; use a new out_dir")
    atomic_write_text(path, json.dumps({"fingerprint": fp}) + "\n")


def finished(job: TrainJob, data: TrainData, seconds: float) -> TrainResult:
    """The result of a job whose ``final/`` already exists (nothing is recomputed)."""
    rows = read_log(job.out_dir)
    train, val = data.examples(job.cfg.method)
    return TrainResult(
        final_dir=Path(job.out_dir) / "final",
        epoch_dirs=epoch_dirs(job.out_dir, job.cfg.epochs),
        rows=rows,
        n_train=len(train),
        n_val=len(val),
        steps=max((r["step"] for r in rows), default=0),
        resumed_from_epoch=-1,
        seconds=seconds,
    )
