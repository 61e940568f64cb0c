"""Trainers: train a policy checkpoint on the preference pairs (or SFT rows) a run made.

``train(job)`` runs the trainer that ``job.cfg.kind`` names (``TRAINERS``: an explicit
dict, no registry); each is a ``Trainer`` (``train(job) -> TrainResult``) under the
contract in ``infra.trainers.base``. ``tiny`` is the project's own CPU loop over
``TinyLM``; ``trl`` is TRL's DPOTrainer/SFTTrainer on any Hugging Face causal LM (the
``train`` extra), on CPU or in a Ray GPU actor.
"""

from __future__ import annotations

from collections.abc import Callable

from infra.trainers.base import Trainer, TrainDiverged, TrainError, TrainJob, TrainResult


def _tiny() -> Trainer:
    from infra.trainers.tiny import TinyTrainer

    return TinyTrainer()


def _trl() -> Trainer:
    from infra.trainers.trl import TrlTrainer

    return TrlTrainer()


TRAINERS: dict[str, Callable[[], Trainer]] = {"tiny": _tiny, "trl": _trl}


def get_trainer(kind: str) -> Trainer:
    """The trainer for ``kind`` (``TrainConfig.kind``); ``TrainError`` for an unknown one."""
    try:
        return TRAINERS[kind]()
    except KeyError:
        raise TrainError(f"unknown trainer kind {kind!r}; known: {sorted(TRAINERS)}") from None


def train(job: TrainJob) -> TrainResult:
    """Run ``job`` with the trainer its config names."""
    return get_trainer(job.cfg.kind).train(job)


__all__ = ["TRAINERS", "TrainDiverged", "TrainError", "TrainJob", "TrainResult", "Trainer", "get_trainer", "train"]
