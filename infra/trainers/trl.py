"""The ``trl`` trainer: TRL 1.16's ``DPOTrainer`` / ``SFTTrainer`` on any Hugging Face causal LM.

Methods: dpo = ``DPOConfig(loss_type=["sigmoid"])``; rpo = ``loss_type=["sigmoid", "sft"]``
with ``loss_weights=[1, alpha]`` (TRL 1.16 has no ``rpo_alpha``; its "sft" term is the NLL
of the chosen completions averaged over the batch's tokens, where the tiny trainer averages
per sequence); sft = ``SFTTrainer`` on prompt/completion rows with the loss on completion
tokens only. The rows are the factory's (``prompt/chosen/rejected`` as ``sphere export``
writes them) in a ``datasets.Dataset``; TRL appends the EOS and tokenizes. The tokenizer
is loaded with ``split_special_tokens=False`` for training so TRL's appended EOS text is
the EOS token (the tiny tokenizer splits special-token text by default); the checkpoints
are saved with the tokenizer as loaded from ``policy_dir``, so a tiny checkpoint stays
loadable by ``infra.tiny.hf.load_pretrained``.

Optimizer and schedule: HF Trainer's AdamW, linear decay to zero, gradient norm clip 1,
no warm-up, no weight decay (the tiny trainer's recipe); fp32 on CPU, bf16 autocast and
gradient checkpointing on GPUs. Sequences are cut at the model's context length.

Checkpoints and resume: HF Trainer saves a full checkpoint (weights, optimizer, scheduler,
RNG) under ``out_dir/hf-trainer/`` at each epoch end; after it (``on_save``), the model and
tokenizer are written to ``out_dir/epoch-<k>/`` (a sibling temp dir, then renamed). A call
with the same job resumes the Trainer from the checkpoint of the last complete
``epoch-<k>`` (optimizer state included). ``hf-trainer/`` is deleted once ``final/`` is
written. A non-finite logged loss or non-finite weights after a step (checked before the
step's checkpoint) stop the job with ``TrainDiverged`` naming the step.

``cfg.num_gpus > 0``: the same training runs inside a Ray actor holding that many GPUs
(Ray started by ``infra.pool.ensure_ray`` if this process has none; ``out_dir`` and the
checkpoint directories must be on a filesystem the actor's node sees). Several GPUs in one actor train with HF Trainer's
single-process data parallelism. Not exercised by the tests (no GPU here).
"""

from __future__ import annotations

import importlib
import json
import math
import shutil
import time
from pathlib import Path

from infra.storage import atomic_write_dir
from infra.trainers.base import (
    TrainData,
    TrainError,
    TrainJob,
    TrainLog,
    TrainResult,
    check_loss,
    check_weights,
    claim,
    epoch_dirs,
    fingerprint,
    finished,
    prepare,
    row,
)

TRAINER_DIR = "hf-trainer"
STEP_KEYS = {  # our row key -> TRL log key
    "reward_accuracy": "rewards/accuracies",
    "margin": "rewards/margins",
    "chosen_logp": "logps/chosen",
    "rejected_logp": "logps/rejected",
}


def _imports() -> None:
    for name in ("datasets", "transformers", "trl"):
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise TrainError(f"kind 'trl' needs the train extra (pip install 'sphere-factory[train]'): {e}") from None


def _save_dir(final: Path, model, tok, meta: dict) -> Path:
    """``model.save_pretrained`` + ``tok.save_pretrained`` into a sibling temp dir, renamed onto
    ``final``. A tiny checkpoint's ``tiny_meta`` (config.json) becomes ``meta``."""
    if hasattr(model.config, "tiny_meta"):
        model.config.tiny_meta = meta

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    return atomic_write_dir(final, write)


def _context_length(model) -> int | None:
    c = model.config
    return getattr(c, "n_positions", None) or getattr(c, "max_position_embeddings", None)


def _trainer_checkpoint(out: Path, epoch: int) -> Path | None:
    """The HF Trainer checkpoint saved at the end of ``epoch`` (None if there is none)."""
    for d in sorted((out / TRAINER_DIR).glob("checkpoint-*")):
        state = d / "trainer_state.json"
        if state.is_file() and abs(json.loads(state.read_text())["epoch"] - epoch) < 1e-6:
            return d
    return None


def _callback(log: TrainLog, out: Path, save_tok, meta: dict, step_times: list[float]):
    from transformers import TrainerCallback

    class Rows(TrainerCallback):
        """Turns Trainer logs into rows; writes ``epoch-<k>/`` after each epoch checkpoint."""

        def on_step_begin(self, args, state, control, **kw):
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, model=None, **kw):
            step_times.append(time.perf_counter() - self._t)
            if model is not None:  # before on_save: a diverged step writes no epoch checkpoint
                check_weights(state.global_step, model.named_parameters())

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            epoch = max(1, math.ceil(round(state.epoch or 0, 6)))  # the epoch being (or just) trained, from 1
            if "loss" in logs:
                log.add(row(state.global_step, epoch, "train", logs["loss"], **{k: logs.get(v) for k, v in STEP_KEYS.items()}))
                check_loss(state.global_step, float(logs["loss"]))
            if "eval_loss" in logs:
                log.add(row(state.global_step, epoch, "val", logs["eval_loss"],
                            **{k: logs.get(f"eval_{v}") for k, v in STEP_KEYS.items()}))

        def on_save(self, args, state, control, model=None, **kw):
            k = round(state.epoch or 0)
            if k >= 1 and abs(state.epoch - k) < 1e-6:  # a complete epoch (a max_steps stop mid-epoch is not)
                _save_dir(out / f"epoch-{k}", model, save_tok, {**meta, "epoch": k, "step": state.global_step})

    return Rows()


def _datasets(cfg, data: TrainData):
    from datasets import Dataset

    if cfg.method == "sft":
        cols = ("prompt", "completion")
        train, val = data.train_sft, data.val_sft
    else:
        cols = ("prompt", "chosen", "rejected")
        train, val = data.train_pairs, data.val_pairs

    def make(rows: list[dict]) -> Dataset:
        return Dataset.from_list([{c: r[c] for c in cols} for r in rows])

    return make(train), (make(val) if val else None)


def _args(cfg, out: Path, has_val: bool, max_length: int | None) -> dict:
    gpu = cfg.num_gpus > 0
    return dict(
        output_dir=str(out / TRAINER_DIR),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=max(cfg.batch_size, 32),
        learning_rate=cfg.lr,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_strategy="steps",
        logging_steps=1,
        logging_nan_inf_filter=False,  # a non-finite loss is logged as it is, and stops the job (check_loss)
        eval_strategy="epoch" if has_val else "no",
        save_strategy="epoch",
        save_total_limit=2,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        disable_tqdm=True,
        use_cpu=not gpu,
        bf16=gpu,
        gradient_checkpointing=gpu,
        dataloader_num_workers=0,
        max_length=max_length,
    )


def train_here(job: TrainJob) -> TrainResult:
    """Run the job in this process (CPU, or the GPUs this process sees)."""
    t0 = time.time()
    cfg, out = job.cfg, Path(job.out_dir)
    data = prepare(job)
    if any(p.get("continues") for p in data.train_pairs + data.val_pairs + data.train_sft):
        raise TrainError("the trl trainer ends every completion with its end-of-sequence token, which would teach the policy "
                         "to stop after one step: train step pairs (train.pair_level step or both) with train.kind tiny")
    _imports()
    claim(out, fingerprint(job, data, "trl"))
    if (out / "final").is_dir():
        return finished(job, data, time.time() - t0)

    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    save_tok = AutoTokenizer.from_pretrained(job.policy_dir)
    train_tok = AutoTokenizer.from_pretrained(job.policy_dir, split_special_tokens=False)
    if train_tok.pad_token is None:
        train_tok.pad_token = train_tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(job.policy_dir)
    meta = {"role": "trained", "trainer": "trl", "method": cfg.method, "parent": str(job.policy_dir),
            "parent_role": (getattr(model.config, "tiny_meta", None) or {}).get("role")}
    train_ds, val_ds = _datasets(cfg, data)
    args = _args(cfg, out, val_ds is not None, _context_length(model))
    done = epoch_dirs(out, cfg.epochs)
    resume = None
    if done:
        resume = _trainer_checkpoint(out, len(done))
        if resume is None:
            raise TrainError(f"{done[-1]} exists but its trainer checkpoint under {out / TRAINER_DIR} is missing; "
                             "delete out_dir to restart")
    log = TrainLog(out, keep_epochs=len(done))
    step_times: list[float] = []
    callbacks = [_callback(log, out, save_tok, meta, step_times)]
    if cfg.method == "sft":
        trainer = SFTTrainer(model=model, args=SFTConfig(**args, completion_only_loss=True), train_dataset=train_ds,
                             eval_dataset=val_ds, processing_class=train_tok, callbacks=callbacks)
    else:
        loss_type, weights = (["sigmoid", "sft"], [1.0, cfg.alpha]) if cfg.method == "rpo" else (["sigmoid"], [1.0])
        ref = AutoModelForCausalLM.from_pretrained(job.reference_dir)
        dpo = DPOConfig(**args, beta=cfg.beta, loss_type=loss_type, loss_weights=weights)
        trainer = DPOTrainer(model=model, ref_model=ref, args=dpo, train_dataset=train_ds, eval_dataset=val_ds,
                             processing_class=train_tok, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # the rows go to the log instead
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        _save_dir(out / "final", trainer.model, save_tok, {**meta, "step": trainer.state.global_step})
    finally:
        log.close()
    shutil.rmtree(out / TRAINER_DIR, ignore_errors=True)
    train_rows, val_rows = data.examples(cfg.method)
    return TrainResult(
        final_dir=out / "final",
        epoch_dirs=epoch_dirs(out, cfg.epochs),
        rows=log.rows,
        n_train=len(train_rows),
        n_val=len(val_rows),
        steps=trainer.state.global_step,
        resumed_from_epoch=len(done),
        seconds=time.time() - t0,
        step_seconds=sum(step_times) / len(step_times) if step_times else None,
    )


class _GpuActor:
    """Ray actor body: runs ``train_here`` on the GPUs Ray gave it. With ``job.publish_to``
    (an object-store data root) it needs nothing of the driver's disk: it copies the starting
    checkpoint from the store to its host (``policy_source``), trains in its host's cache and
    uploads the final checkpoint to the store itself."""

    def train(self, job: TrainJob) -> TrainResult:
        if not job.publish_to:
            return train_here(job)
        import dataclasses
        import hashlib

        from infra.fs import as_path, cache_root, localize, upload_dir

        start = Path(localize(job.policy_source)) if job.policy_source else job.policy_dir
        work = cache_root() / "work" / hashlib.sha256(job.publish_to.encode()).hexdigest()[:16] / job.out_dir.name
        result = train_here(dataclasses.replace(job, policy_dir=start, reference_dir=start, out_dir=work))
        dest = as_path(job.publish_to)
        dest.rmtree()
        upload_dir(result.final_dir, dest)
        return dataclasses.replace(result, published=True)


def train_in_ray(job: TrainJob, runtime_env: dict | None = None) -> TrainResult:
    """Run the job in a Ray actor reserving ``job.cfg.num_gpus`` GPUs (Ray is started as the
    pool starts it if this process has none; ``runtime_env``: the actor's environment, which
    needs trl and a CUDA torch). A ``TrainError`` raised inside is re-raised as is."""
    import ray

    from infra.config import PoolConfig
    from infra.pool import ensure_ray

    ensure_ray(PoolConfig(num_gpus=job.cfg.num_gpus))
    opts: dict = {"num_gpus": job.cfg.num_gpus, "num_cpus": 1, "max_restarts": 0}
    if runtime_env:
        opts["runtime_env"] = runtime_env
    actor = ray.remote(_GpuActor).options(**opts).remote()
    try:
        return ray.get(actor.train.remote(job))
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, TrainError):
            raise e.cause from None
        raise
    finally:
        ray.kill(actor)


class TrlTrainer:
    """``Trainer`` for ``kind: trl`` (see the module doc). ``runtime_env``: the Ray GPU
    actor's environment when ``cfg.num_gpus > 0`` (e.g. the run's ``pool.runtime_env``
    plus trl)."""

    def __init__(self, runtime_env: dict | None = None):
        self.runtime_env = runtime_env

    def train(self, job: TrainJob) -> TrainResult:
        prepare(job)  # a job with nothing to train on fails here, before a Ray actor or a model is started
        return train_in_ray(job, self.runtime_env) if job.cfg.num_gpus > 0 else train_here(job)
