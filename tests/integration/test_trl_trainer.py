"""The trl trainer on CPU: TRL's DPOTrainer (rpo) and SFTTrainer on pairs in the factory's
export format, from the shipped tiny-small checkpoint; its checkpoints load in the tiny
backend; an interrupted run resumes from its last epoch checkpoint."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pyarrow.json as pj
import pytest

from infra.config import TrainConfig
from infra.tiny.hf import load_pretrained
from infra.tiny.model import sample
from infra.tiny.train import PROMPT, corrupt_step
from infra.tiny.worldgen import Difficulty, generate
from infra.trainers import TrainDiverged, TrainError, TrainJob, train
from infra.trainers import trl as trl_trainer
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="needs the train extra (trl)")

SMALL = ROOT / "infra" / "models" / "tiny-small"
EXPORT_COLUMNS = ["prompt", "chosen", "rejected", "pair_id", "problem_id", "stage", "chosen_chain_id",
                  "rejected_chain_id", "chosen_score", "rejected_score", "margin"]  # tasks.export COLUMNS["dpo"]


def export_file(tmp_path: Path, n: int) -> Path:
    """A ``dpo.jsonl`` as ``sphere export`` writes it."""
    rng = random.Random(3)
    lines = []
    for i, p in enumerate(generate(n, 11, Difficulty(min_steps=2, max_steps=4))):
        steps = list(p.steps)
        j = rng.randrange(len(steps))
        steps[j] = corrupt_step(rng, steps[j])
        row = dict(zip(EXPORT_COLUMNS, [PROMPT.format(question=p.question), p.solution,
                                        "\n\n".join([*steps, f"#### {p.answer + 1}"]), f"pair{i}", f"prob{i}",
                                        "generation", f"c{i}a", f"c{i}b", 1.0, 0.0, 1.0]))
        lines.append(json.dumps(row) + "\n")
    path = tmp_path / "dpo.jsonl"
    path.write_text("".join(lines))
    return path


def trl_job(tmp_path: Path, pairs, name: str, **cfg) -> TrainJob:
    base = {"kind": "trl", "method": "rpo", "epochs": 2, "batch_size": 4, "val_share": 0.15, "lr": 1e-4}
    return TrainJob(policy_dir=SMALL, reference_dir=SMALL, pairs=pairs, cfg=TrainConfig(**{**base, **cfg}),
                    out_dir=tmp_path / name)


def test_trl_rpo_trains_on_exported_pairs_into_tiny_loadable_checkpoints(tmp_path, monkeypatch):
    pairs = pj.read_json(export_file(tmp_path, 48))  # a pyarrow Table with the export's columns
    real_save = trl_trainer._save_dir

    def killed_after_epoch_1(final, *a, **kw):
        path = real_save(final, *a, **kw)
        if final.name == "epoch-1":
            raise KeyboardInterrupt("killed")
        return path

    monkeypatch.setattr(trl_trainer, "_save_dir", killed_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        train(trl_job(tmp_path, pairs, "out"))
    monkeypatch.setattr(trl_trainer, "_save_dir", real_save)
    epoch1 = (tmp_path / "out" / "epoch-1" / "model.safetensors").read_bytes()
    r = train(trl_job(tmp_path, pairs, "out"))

    assert r.resumed_from_epoch == 1 and r.steps >= 20
    assert (tmp_path / "out" / "epoch-1" / "model.safetensors").read_bytes() == epoch1
    rows = [x for x in r.rows if x["split"] == "train"]
    assert [x["step"] for x in rows] == list(range(1, r.steps + 1))  # epoch 1 kept, epoch 2 run once
    assert rows[0]["margin"] == 0.0 and rows[-1]["reward_accuracy"] is not None
    assert [x["epoch"] for x in r.rows if x["split"] == "val"] == [1, 2]
    assert r.epoch_dirs == [tmp_path / "out" / "epoch-1", tmp_path / "out" / "epoch-2"]
    assert not (tmp_path / "out" / "hf-trainer").exists()
    for d in [*r.epoch_dirs, r.final_dir]:
        model, tok, meta = load_pretrained(d)  # the tiny backend's loader: weights and tokenizer files intact
        assert meta["trainer"] == "trl" and meta["method"] == "rpo"
    assert (r.final_dir / "tokenizer.json").read_bytes() == (SMALL / "tokenizer.json").read_bytes()
    model, tok, _ = load_pretrained(r.final_dir)
    out = sample(model, tok, [pairs["prompt"][0].as_py()], [0], temperature=0.0, top_p=1.0, max_tokens=160, stop=[])
    assert "####" in out[0].text and out[0].finish_reason == "eos"  # still ends with <eos>, not "<eos>" text


def test_trl_sft_runs_and_saves(tmp_path):
    pairs = pj.read_json(export_file(tmp_path, 12)).to_pylist()
    r = train(trl_job(tmp_path, pairs, "sft", method="sft", epochs=1, max_steps=3))
    assert r.steps == 3 and [x["step"] for x in r.rows if x["split"] == "train"] == [1, 2, 3]
    assert load_pretrained(r.final_dir)[2]["method"] == "sft"


def test_the_gpu_path_runs_the_job_in_a_ray_actor(tmp_path):
    """``num_gpus > 0`` runs ``train_in_ray``; here with 0 GPUs (no GPU on CI): the job travels
    to the actor, the result comes back, a ``TrainError`` raised inside is re-raised as is."""
    import ray

    started = not ray.is_initialized()
    pairs = pj.read_json(export_file(tmp_path, 12)).to_pylist()
    try:
        r = trl_trainer.train_in_ray(trl_job(tmp_path, pairs, "ray", epochs=1, max_steps=2))
        assert r.steps == 2 and load_pretrained(r.final_dir)[2]["trainer"] == "trl"
        with pytest.raises(TrainError, match="another job"):
            trl_trainer.train_in_ray(trl_job(tmp_path, pairs, "ray", epochs=1, max_steps=3))
    finally:
        if started:
            ray.shutdown()


def test_the_gpu_path_on_an_object_store_root_needs_nothing_of_the_drivers_disk(tmp_path):
    """The actor copies the starting checkpoint from the store (moto's S3 server on 127.0.0.1)
    and uploads the final one itself: the job it receives names both by URI, and its local
    paths (``policy_dir``, ``out_dir``) point at nothing."""
    import ray

    from infra.fs import as_path, localize, upload_dir
    from tests.support.s3 import S3Server, restore, use_in_process

    server = S3Server(log_dir=tmp_path)
    old = use_in_process(server)
    started = not ray.is_initialized()
    try:
        upload_dir(SMALL, as_path(server.uri("models/start")))
        pairs = pj.read_json(export_file(tmp_path, 12)).to_pylist()
        nowhere = tmp_path / "not-on-the-actors-host"
        job = TrainJob(policy_dir=nowhere, reference_dir=nowhere, pairs=pairs, out_dir=nowhere / "m1.work",
                       cfg=TrainConfig(kind="trl", method="rpo", epochs=1, max_steps=2, batch_size=4, val_share=0.0),
                       policy_source=server.uri("models/start"), publish_to=server.uri("runs/r/models/train/m1"))
        env = {**server.env, "SPHERE_CACHE": str(tmp_path / "actor-cache")}  # the actor host's own credentials and cache
        r = trl_trainer.train_in_ray(job, runtime_env={"env_vars": env})
        assert r.published and r.steps == 2 and not nowhere.exists()
        copy = localize(server.uri("runs/r/models/train/m1"))  # as the next round's actors serve it, hash-checked
        assert load_pretrained(Path(copy))[2]["trainer"] == "trl"
        assert str(tmp_path / "actor-cache") in str(r.final_dir)  # it trained in its own host's cache
    finally:
        if started:
            ray.shutdown()
        restore(old)
        server.stop()


def test_a_diverging_trl_training_stops_naming_the_step_and_writes_no_final(tmp_path):
    pairs = pj.read_json(export_file(tmp_path, 24))
    with pytest.raises(TrainDiverged, match=r"diverged at step \d+") as e:
        train(trl_job(tmp_path, pairs, "out", epochs=1, lr=1000.0, val_share=0.0))
    assert "train.lr" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out" / "final").exists() and not list((tmp_path / "out").glob("epoch-*"))
