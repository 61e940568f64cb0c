"""The trainers' losses, data preparation, config and the tiny trainer's contract
(loss goes down, HF checkpoints per epoch, resume after a kill, empty input refused)."""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

import pytest
import torch

from infra.config import ConfigError, TrainConfig, load_config
from infra.tiny.hf import load_pretrained
from infra.tiny.train import PROMPT, corrupt_step
from infra.tiny.worldgen import Difficulty, generate
from infra.trainers import TrainDiverged, TrainError, TrainJob, train
from infra.trainers import tiny as tiny_trainer
from infra.trainers.base import in_val, prepare, read_log
from infra.trainers.losses import completion_logps, dpo_losses, pair_metrics, rpo_losses, sft_loss
from tests.conftest import ROOT

SMALL = ROOT / "infra" / "models" / "tiny-small"


def make_pairs(n: int, seed: int = 5) -> list[dict]:
    """Pairs in the factory's format: the reference solution vs one with a slipped step."""
    rng = random.Random(seed)
    out = []
    for i, p in enumerate(generate(n, seed, Difficulty(min_steps=2, max_steps=4))):
        steps = list(p.steps)
        j = rng.randrange(len(steps))
        steps[j] = corrupt_step(rng, steps[j])
        out.append({"prompt": PROMPT.format(question=p.question), "chosen": p.solution,
                    "rejected": "\n\n".join([*steps, f"#### {p.answer + 1}"]), "problem_id": f"p{i}",
                    "stage": ["generation", "self_correction", "diversity"][i % 3], "margin": 0.25 * (i % 5)})
    return out


def job(tmp_path: Path, pairs, name: str = "out", **cfg) -> TrainJob:
    base = {"method": "dpo", "epochs": 2, "batch_size": 8, "val_share": 0.2, "lr": 1e-4}
    return TrainJob(policy_dir=SMALL, reference_dir=SMALL, pairs=pairs, cfg=TrainConfig(**{**base, **cfg}),
                    out_dir=tmp_path / name)


# ---------------------------------------------------------------- losses


def test_dpo_loss_matches_the_hand_computed_value():
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.0))
    # delta = (pc - rc) - (pr - rr) = 1 - (-1) = 2; loss = -log sigmoid(0.1 * 2) = log(1 + e^-0.2)
    assert dpo_losses(pc, pr, rc, rr, beta=0.1).item() == pytest.approx(math.log(1 + math.exp(-0.2)), abs=1e-6)
    m = pair_metrics(pc, pr, rc, rr, beta=0.1)
    assert m["margin"] == pytest.approx(0.2) and m["reward_accuracy"] == 1.0
    assert m["chosen_logp"] == -1.0 and m["rejected_logp"] == -3.0


def test_rpo_adds_alpha_times_the_chosen_nll_per_token():
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.0))
    dpo = math.log(1 + math.exp(-0.2))
    # chosen NLL per token = 1 / 4; alpha 2 adds 0.5
    got = rpo_losses(pc, pr, rc, rr, torch.tensor([4.0]), beta=0.1, alpha=2.0).item()
    assert got == pytest.approx(dpo + 0.5, abs=1e-6)
    assert rpo_losses(pc, pr, rc, rr, torch.tensor([4.0]), beta=0.1, alpha=0.0).item() == pytest.approx(dpo, abs=1e-6)


def test_a_tie_is_not_a_correct_preference():
    z = torch.zeros(3)
    assert pair_metrics(z, z, z, z, beta=0.1)["reward_accuracy"] == 0.0
    assert dpo_losses(z, z, z, z, beta=0.1)[0].item() == pytest.approx(math.log(2))


def test_completion_logps_count_completion_tokens_only():
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 5)
    ids = torch.tensor([[1, 3, 0, 4]])
    completion = torch.tensor([[False, False, True, True]])  # tokens 0 and 4 are the completion
    lp, n = completion_logps(logits, ids, completion)
    logp = torch.log_softmax(logits, dim=-1)
    assert n.item() == 2
    assert lp.item() == pytest.approx((logp[0, 1, 0] + logp[0, 2, 4]).item(), abs=1e-6)
    prompt_changed = logits.clone()
    prompt_changed[0, 0] += 5.0  # the prediction of a prompt token
    assert completion_logps(prompt_changed, ids, completion)[0].item() == pytest.approx(lp.item(), abs=1e-6)


def test_sft_loss_is_the_token_mean_nll():
    assert sft_loss(torch.tensor([-2.0, -6.0]), torch.tensor([2.0, 2.0])).item() == pytest.approx(2.0)


def test_tiny_sequence_logps_ignore_padding_and_prompt():
    model, tok, _ = load_pretrained(SMALL)
    pairs = make_pairs(3)
    seqs = [tiny_trainer.encode(tok, p["prompt"], p["chosen"], model.config.max_len) for p in pairs]
    with torch.no_grad():
        together, n = tiny_trainer.sequence_logps(model, seqs)
        alone = torch.cat([tiny_trainer.sequence_logps(model, [s])[0] for s in seqs])
    assert torch.allclose(together, alone, atol=1e-4)
    assert n.tolist() == [len(tok.encode(p["chosen"])) + 1 for p in pairs]  # completion + <eos>


# ---------------------------------------------------------------- data and config


def test_filters_and_the_split_by_problem(tmp_path):
    pairs = make_pairs(60)
    pairs += [dict(p, chosen=p["chosen"] + " ") for p in pairs[:10]]  # a second pair of the same problems
    data = prepare(job(tmp_path, pairs, pair_stages=["generation", "diversity"], min_margin=0.5, val_share=0.3))
    kept = [p for p in pairs if p["stage"] != "self_correction" and p["margin"] >= 0.5]
    assert len(data.train_pairs) + len(data.val_pairs) == len(kept)
    assert data.val_pairs and data.train_pairs
    val_keys = {p["key"] for p in data.val_pairs}
    assert not val_keys & {p["key"] for p in data.train_pairs}  # a problem is on one side only
    assert val_keys == {p["problem_id"] for p in kept if in_val(p["problem_id"], 0.3)}


def test_sft_reads_its_source(tmp_path):
    pairs = make_pairs(20)
    sft = [{"prompt": p["prompt"], "completion": p["chosen"], "problem_id": p["problem_id"]} for p in pairs[:7]]
    j = TrainJob(policy_dir=SMALL, reference_dir=SMALL, pairs=pairs, sft=sft,
                 cfg=TrainConfig(method="sft", sft_source="sft", val_share=0.0), out_dir=tmp_path / "o")
    assert [r["completion"] for r in prepare(j).train_sft] == [r["completion"] for r in sft]
    chosen = prepare(job(tmp_path, pairs + pairs[:3], method="sft", sft_source="chosen", val_share=0.0))
    assert len(chosen.train_sft) == 20  # duplicate (prompt, chosen) rows count once


@pytest.mark.parametrize("kind", ["tiny", "trl"])
@pytest.mark.parametrize("pairs, filters", [
    ([], {}),
    (make_pairs(6), {"pair_stages": ["self_correction"], "min_margin": 2.0}),
    (make_pairs(6), {"val_share": 0.999}),
])
def test_nothing_to_train_on_raises_before_any_work(tmp_path, kind, pairs, filters):
    j = TrainJob(policy_dir=tmp_path / "no-such-model", reference_dir=tmp_path / "no-such-model", pairs=pairs,
                 cfg=TrainConfig(kind=kind, **filters), out_dir=tmp_path / "out")
    with pytest.raises(TrainError, match="no training pairs"):
        train(j)
    assert not (tmp_path / "out").exists()


def test_rows_without_text_columns_are_refused(tmp_path):
    with pytest.raises(TrainError, match=r"lacks text column\(s\) \['rejected'\]"):
        prepare(job(tmp_path, [{"prompt": "p", "chosen": "c"}]))


@pytest.mark.parametrize("yaml_text, field, words", [
    ("train:\n  method: ppo\n", "train.method", "'dpo', 'rpo' or 'sft'"),
    ("train:\n  beta: 0\n", "train.beta", "greater than 0"),
    ("train:\n  alpha: -1\n", "train.alpha", "greater than or equal to 0"),
    ("train:\n  pair_stages: [generation, magic]\n", "train.pair_stages.1", "'generation', 'self_correction' or 'diversity'"),
    ("train:\n  num_gpus: 1\n", "train", "needs kind 'trl'"),
    ("train:\n  epochz: 1\n", "train.epochz", "Extra inputs"),
])
def test_a_bad_training_config_names_the_field(tmp_path, yaml_text, field, words):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert field in str(e.value) and words in str(e.value)
    assert str(e.value).count("\n") == 1  # one error line


# ---------------------------------------------------------------- the tiny trainer


def _weights(d: Path) -> dict[str, torch.Tensor]:
    return load_pretrained(d)[0].state_dict()


def test_tiny_trainer_lowers_the_loss_and_writes_hf_checkpoints(tmp_path):
    from transformers import AutoModelForCausalLM

    r = train(job(tmp_path, make_pairs(48), epochs=3, lr=2e-4))
    train_rows = [x for x in r.rows if x["split"] == "train"]
    assert train_rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)  # policy == reference at step 1
    by_epoch = {e: [x["loss"] for x in train_rows if x["epoch"] == e] for e in (1, 2, 3)}
    assert sum(by_epoch[3]) / len(by_epoch[3]) < 0.8 * sum(by_epoch[1]) / len(by_epoch[1])
    val = [x for x in r.rows if x["split"] == "val"]
    assert [x["epoch"] for x in val] == [1, 2, 3] and val[-1]["loss"] < math.log(2)
    assert r.rows == read_log(tmp_path / "out") and r.steps == train_rows[-1]["step"] == 3 * math.ceil(r.n_train / 8)
    assert r.epoch_dirs == [tmp_path / "out" / f"epoch-{k}" for k in (1, 2, 3)]
    assert set(train_rows[0]) == {"step", "epoch", "loss", "reward_accuracy", "margin", "chosen_logp", "rejected_logp", "split"}
    ids = torch.tensor([[1, 5, 9, 12]])
    for d in [*r.epoch_dirs, r.final_dir]:
        hf = AutoModelForCausalLM.from_pretrained(d).eval()
        ours, _, meta = load_pretrained(d)
        with torch.no_grad():
            want, _ = ours(ids, torch.arange(4)[None], torch.tril(torch.ones(4, 4, dtype=torch.bool))[None, None])
            assert torch.allclose(hf(ids).logits, want, atol=1e-4)
        assert meta["role"] == "trained" and meta["method"] == "dpo"
    assert not torch.equal(_weights(r.final_dir)["tok.weight"], _weights(SMALL)["tok.weight"])
    assert torch.equal(_weights(r.final_dir)["tok.weight"], _weights(r.epoch_dirs[-1])["tok.weight"])


@pytest.mark.parametrize("method", ["rpo", "sft"])
def test_tiny_trainer_rpo_and_sft_run(tmp_path, method):
    r = train(job(tmp_path, make_pairs(24), method=method, epochs=1, max_steps=2))
    assert r.steps == 2 and load_pretrained(r.final_dir)[2]["method"] == method
    assert r.epoch_dirs == []  # the max_steps stop came mid-epoch
    rows = [x for x in r.rows if x["split"] == "train"]
    assert (rows[0]["reward_accuracy"] is None) == (method == "sft")


def test_an_interrupted_run_resumes_from_its_last_epoch_checkpoint(tmp_path, monkeypatch):
    pairs = make_pairs(40)
    whole = train(job(tmp_path, pairs, name="whole", epochs=3))

    real_save = tiny_trainer._save_epoch

    def killed_after_epoch_1(out, k, *a, **kw):
        path = real_save(out, k, *a, **kw)
        if k == 1:
            raise KeyboardInterrupt("killed")
        return path

    monkeypatch.setattr(tiny_trainer, "_save_epoch", killed_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        train(job(tmp_path, pairs, name="cut", epochs=3))
    monkeypatch.setattr(tiny_trainer, "_save_epoch", real_save)
    cut = tmp_path / "cut"
    assert not (cut / "final").exists() and (cut / "epoch-1").is_dir() and not (cut / "epoch-2").exists()
    epoch1 = (cut / "epoch-1" / "model.safetensors").read_bytes()

    steps = []
    real_step = tiny_trainer.train_step
    monkeypatch.setattr(tiny_trainer, "train_step", lambda *a, **kw: steps.append(1) or real_step(*a, **kw))
    resumed = train(job(tmp_path, pairs, name="cut", epochs=3))
    per_epoch = math.ceil(whole.n_train / 8)
    assert resumed.resumed_from_epoch == 1 and len(steps) == 2 * per_epoch  # epoch 1 was not recomputed
    assert (cut / "epoch-1" / "model.safetensors").read_bytes() == epoch1
    assert resumed.rows == whole.rows  # same batches, same optimizer state: the same run
    for name, t in _weights(whole.final_dir).items():
        assert torch.equal(t, _weights(resumed.final_dir)[name]), name

    again = train(job(tmp_path, pairs, name="cut", epochs=3))  # finished: no work
    assert again.resumed_from_epoch == -1 and again.rows == whole.rows and len(steps) == 2 * per_epoch


def test_another_job_cannot_reuse_an_out_dir(tmp_path):
    pairs = make_pairs(16)
    train(job(tmp_path, pairs, epochs=1, max_steps=1))
    with pytest.raises(TrainError, match="another job"):
        train(job(tmp_path, pairs, epochs=1, max_steps=1, lr=3e-4))


def test_a_diverging_training_stops_naming_the_step_and_writes_no_checkpoint(tmp_path):
    """lr=1000: the loss goes 1.5 -> 7e8 -> nan and every weight turns NaN; the trainer must stop there."""
    with pytest.raises(TrainDiverged, match=r"diverged at step \d+") as e:
        train(job(tmp_path, make_pairs(32), method="rpo", epochs=1, lr=1000))
    step = int(re.search(r"step (\d+)", str(e.value)).group(1))
    assert 1 <= step <= 3 and "train.lr" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out" / "final").exists() and not list((tmp_path / "out").glob("epoch-*"))
