"""The ``tiny`` trainer: the project's own torch loop over ``TinyLM`` on CPU.

A sequence is ``<bos> prompt completion <eos>`` tokenized as in ``infra.tiny.train`` (prompt
and completion encoded separately, so the boundary is exact); the loss masks the prompt
tokens out and a sequence log-prob is the sum over the completion tokens (EOS included).
The reference log-probs are computed once, before training, from ``job.reference_dir``
(the reference model is then freed). Methods and losses: ``infra.trainers.losses``.

Optimizer: AdamW (betas 0.9/0.999, eps 1e-8, no weight decay), gradient norm clipped at 1,
learning rate decayed linearly from ``cfg.lr`` to zero over the run (HF Trainer's defaults,
so the trl trainer runs the same recipe). Batch order is a pure function of
``(cfg.seed, epoch)``.

Resume: after epoch k the optimizer state and step counter go to ``out_dir/.state/
epoch-<k>.pt`` and then the weights to ``out_dir/epoch-<k>/`` (both atomic; the
directory is written last, so its presence means both are complete). A call with the same
job continues from the last such epoch with the optimizer state restored, so an
interrupted run ends bit-identical to an uninterrupted one. ``.state`` is deleted once
``final/`` is written.

A non-finite loss or non-finite weights after a step stop the job with ``TrainDiverged``
naming the step (``infra.trainers.base.check_loss`` / ``check_weights``).
"""

from __future__ import annotations

import math
import random
import shutil
import time
from pathlib import Path

import torch

from infra.storage import atomic_write
from infra.tiny.hf import load_pretrained, save_pretrained
from infra.tiny.model import BOS, EOS, PAD, TinyLM, Tokenizer
from infra.trainers.base import (
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
from infra.trainers.losses import completion_logps, dpo_losses, pair_metrics, rpo_losses, sft_loss

Encoded = tuple[list[int], list[bool]]
STATE_DIR = ".state"
REF_BATCH = 64


def encode(tok: Tokenizer, prompt: str, completion: str, max_len: int, eos: bool = True) -> Encoded:
    """``[<bos>, prompt..., completion..., <eos>]`` cut to ``max_len``, and the completion mask.
    ``eos=False`` for a completion the policy continues after (a step pair's step and its
    separator): ending it with ``<eos>`` would teach the model to stop after one step."""
    a, b = [BOS, *tok.encode(prompt)], [*tok.encode(completion), *([EOS] if eos else [])]
    return (a + b)[:max_len], ([False] * len(a) + [True] * len(b))[:max_len]


def sequence_logps(model: TinyLM, seqs: list[Encoded]) -> tuple[torch.Tensor, torch.Tensor]:
    """Completion log-prob sums and completion token counts of ``seqs`` (one forward pass)."""
    t = max(len(ids) for ids, _ in seqs)
    x = torch.full((len(seqs), t), PAD, dtype=torch.long)
    m = torch.zeros((len(seqs), t), dtype=torch.bool)
    for i, (ids, mask) in enumerate(seqs):
        x[i, : len(ids)] = torch.tensor(ids)
        m[i, : len(mask)] = torch.tensor(mask)
    pos = torch.arange(t)[None].expand_as(x)
    causal = torch.tril(torch.ones(t, t, dtype=torch.bool))[None, None]  # right padding: causal is enough
    logits, _ = model(x, pos, causal)
    return completion_logps(logits, x, m)


@torch.inference_mode()
def reference_logps(model: TinyLM, pairs: list[tuple[Encoded, Encoded]]) -> torch.Tensor:
    """(N, 2) reference log-probs of (chosen, rejected) per pair."""
    out = []
    for i in range(0, len(pairs), REF_BATCH):
        chunk = pairs[i : i + REF_BATCH]
        lp, _ = sequence_logps(model, [c for c, _ in chunk] + [r for _, r in chunk])
        out.append(torch.stack(lp.chunk(2), dim=1))
    return torch.cat(out) if out else torch.zeros((0, 2))


def _adamw(model: TinyLM, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)


def _pair_loss(cfg, lp: torch.Tensor, n: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Per-pair losses and metrics of a [chosen..., rejected...] batch."""
    pc, pr = lp.chunk(2)
    rc, rr = ref[:, 0], ref[:, 1]
    if cfg.method == "rpo":
        losses = rpo_losses(pc, pr, rc, rr, n.chunk(2)[0], cfg.beta, cfg.alpha)
    else:
        losses = dpo_losses(pc, pr, rc, rr, cfg.beta)
    return losses, pair_metrics(pc, pr, rc, rr, cfg.beta)


def train_step(model, opt, cfg, batch: list, ref: torch.Tensor | None, lr: float) -> tuple[float, dict]:
    """One optimizer step on ``batch`` (pairs of encodings, or encodings for sft)."""
    model.train()
    if cfg.method == "sft":
        lp, n = sequence_logps(model, batch)
        loss, metrics = sft_loss(lp, n), {"chosen_logp": float(lp.detach().mean())}
    else:
        lp, n = sequence_logps(model, [c for c, _ in batch] + [r for _, r in batch])
        losses, metrics = _pair_loss(cfg, lp, n, ref)
        loss = losses.mean()
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return float(loss.detach()), metrics


@torch.inference_mode()
def validate(model, cfg, pairs: list, ref: torch.Tensor, sft: list, batch_size: int) -> dict | None:
    """Loss of the method and pair metrics over the held-out examples (None if there are none)."""
    model.eval()
    pcs, prs, losses = [], [], []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        lp, n = sequence_logps(model, [c for c, _ in chunk] + [r for _, r in chunk])
        per_pair, _ = _pair_loss(cfg, lp, n, ref[i : i + batch_size])
        pcs.append(lp.chunk(2)[0])
        prs.append(lp.chunk(2)[1])
        losses.append(per_pair)
    metrics = pair_metrics(torch.cat(pcs), torch.cat(prs), ref[:, 0], ref[:, 1], cfg.beta) if pairs else {}
    if cfg.method == "sft":
        if not sft:
            return None
        sums = [sequence_logps(model, sft[i : i + batch_size]) for i in range(0, len(sft), batch_size)]
        loss = float(sft_loss(torch.cat([s for s, _ in sums]), torch.cat([n for _, n in sums])))
    elif pairs:
        loss = float(torch.cat(losses).mean())
    else:
        return None
    return {"loss": loss, **metrics}


def _save_epoch(out: Path, k: int, model: TinyLM, tok: Tokenizer, meta: dict, opt, step: int) -> Path:
    """Optimizer state, then the weights (the directory's presence marks both complete)."""
    state = {"optimizer": opt.state_dict(), "step": step, "epoch": k}
    atomic_write(out / STATE_DIR / f"epoch-{k}.pt", lambda tmp: torch.save(state, tmp))
    return save_pretrained(out / f"epoch-{k}", model, tok, {**meta, "epoch": k, "step": step})


class TinyTrainer:
    """``Trainer`` for ``kind: tiny`` (see the module doc)."""

    def train(self, job: TrainJob) -> TrainResult:
        t0 = time.time()
        cfg, out = job.cfg, Path(job.out_dir)
        data = prepare(job)
        claim(out, fingerprint(job, data, "tiny"))
        if (out / "final").is_dir():
            return finished(job, data, time.time() - t0)

        model, tok, parent_meta = load_pretrained(job.policy_dir)
        meta = {"role": "trained", "trainer": "tiny", "method": cfg.method, "parent": str(job.policy_dir),
                "parent_role": parent_meta.get("role")}
        done = epoch_dirs(out, cfg.epochs)
        opt, step = _adamw(model, cfg.lr), 0
        if done:
            model, _, _ = load_pretrained(done[-1])
            opt = _adamw(model, cfg.lr)
            state = torch.load(out / STATE_DIR / f"{done[-1].name}.pt", map_location="cpu", weights_only=True)
            opt.load_state_dict(state["optimizer"])
            step = int(state["step"])
        max_len = model.config.max_len

        def enc_pair(p: dict) -> tuple[Encoded, Encoded]:
            eos = not p.get("continues")
            return encode(tok, p["prompt"], p["chosen"], max_len, eos), encode(tok, p["prompt"], p["rejected"], max_len, eos)

        train_pairs = [enc_pair(p) for p in data.train_pairs] if cfg.method != "sft" else []
        val_pairs = [enc_pair(p) for p in data.val_pairs]
        train_sft = [encode(tok, r["prompt"], r["completion"], max_len, not r.get("continues")) for r in data.train_sft]
        val_sft = [encode(tok, r["prompt"], r["completion"], max_len, not r.get("continues")) for r in data.val_sft]
        ref_model, _, _ = load_pretrained(job.reference_dir)
        ref_train, ref_val = reference_logps(ref_model, train_pairs), reference_logps(ref_model, val_pairs)
        del ref_model

        examples = train_sft if cfg.method == "sft" else train_pairs
        per_epoch = math.ceil(len(examples) / cfg.batch_size)
        total = min(cfg.max_steps or math.inf, cfg.epochs * per_epoch)
        torch.manual_seed(cfg.seed)
        log = TrainLog(out, keep_epochs=len(done))
        step_times: list[float] = []
        try:
            for epoch in range(len(done) + 1, cfg.epochs + 1):
                if step >= total:
                    break
                order = list(range(len(examples)))
                random.Random(f"{cfg.seed}:{epoch}").shuffle(order)
                ran = 0
                for b in range(0, len(order), cfg.batch_size):
                    if step >= total:
                        break
                    idx = order[b : b + cfg.batch_size]
                    ts = time.perf_counter()
                    ref = ref_train[idx] if cfg.method != "sft" else None
                    loss, metrics = train_step(model, opt, cfg, [examples[i] for i in idx], ref, cfg.lr * (1 - step / total))
                    step_times.append(time.perf_counter() - ts)
                    step, ran = step + 1, ran + 1
                    log.add(row(step, epoch, "train", loss, **metrics))
                    check_loss(step, loss)
                    check_weights(step, model.named_parameters())
                val = validate(model, cfg, val_pairs, ref_val, val_sft, max(cfg.batch_size, 32))
                if val is not None:
                    log.add(row(step, epoch, "val", **val))
                if ran == per_epoch:
                    _save_epoch(out, epoch, model, tok, meta, opt, step)
            save_pretrained(out / "final", model, tok, {**meta, "step": step})
        finally:
            log.close()
        shutil.rmtree(out / STATE_DIR, ignore_errors=True)
        return TrainResult(
            final_dir=out / "final",
            epoch_dirs=epoch_dirs(out, cfg.epochs),
            rows=log.rows,
            n_train=len(examples),
            n_val=len(val_sft if cfg.method == "sft" else val_pairs),
            steps=step,
            resumed_from_epoch=len(done),
            seconds=time.time() - t0,
            step_seconds=sum(step_times) / len(step_times) if step_times else None,
        )
