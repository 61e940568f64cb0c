"""Which shard runs next, and which stages run together: the factory's scheduler, pure.

Nothing here starts work: ``flows.pipeline`` submits what ``ShardQueue.take`` hands out and
reports back with ``ShardQueue.finish``; ``parts`` cuts the run's stage groups where their
engines cannot share the cluster. Both are plain data over stage names (or any stage
objects), so they are unit-tested without Prefect, Ray or a run directory.

Barrier scheduling is the special case of groups of one stage; streaming puts a stage in
the group of the stage it streams from (``flows.stages.stream_groups``).
"""

from __future__ import annotations

import heapq
import itertools
from typing import Callable, Iterable, Mapping, Sequence, TypeVar

S = TypeVar("S")


class StageFailed(RuntimeError):
    """Some shards of a stage (or group of stages) failed; the finished ones are kept.
    ``causes``: the shards' exceptions."""

    causes: tuple[BaseException, ...] = ()

    @classmethod
    def of(cls, label: str, total: int, failed: list[tuple[str, str, BaseException]]) -> StageFailed:
        """The failure of ``label``'s ``failed`` (stage, shard, exception) out of ``total`` shards."""
        err = cls(f"{len(failed)} of {total} shards of {label} failed (finished ones kept):\n"
                  + "\n".join(f"{stage}/{shard}: {type(e).__name__}: {e}" for stage, shard, e in failed))
        err.causes = tuple(e for _, _, e in failed)
        return err


class StageDeadlineExceeded(StageFailed):
    """A stage ran past ``pool.stage_deadline_s``; its finished shards are kept."""

    @classmethod
    def of(cls, stages: list[str], deadline_s: float, backends: list, finished: int, total: int) -> StageDeadlineExceeded:
        """What ran out of time (the stages and the models they ran on) and what is kept."""
        models = sorted({f"{b.kind}:{getattr(b, 'model', None) or getattr(b, 'checkpoint', None) or ''}" for b in backends})
        return cls(f"{'+'.join(stages)} ran past pool.stage_deadline_s={deadline_s}s on {', '.join(models) or 'no backend'}: "
                   f"{finished} of {total} shards finished and are kept; resume to redo the rest")


class ShardQueue:
    """The ready shards of one group of stages and the shards in flight.

    Two lanes: model shards (a stage with backends) and CPU shards, each with its own limit,
    so a CPU shard (routing) never waits for a model slot and overlaps the model work. In each
    lane a ready shard of a later stage (in ``stages`` order) goes before one of an earlier
    stage, ties in the order they became ready: work flows through to the end of the group
    instead of queueing behind every shard of its first stage.
    """

    def __init__(self, stages: Sequence[str], model: Mapping[str, bool], max_model: int, max_cpu: int):
        if max_model < 1 or max_cpu < 1:
            raise ValueError(f"lane limits must be at least 1 (model {max_model}, cpu {max_cpu})")
        self._rank = {name: k for k, name in enumerate(stages)}
        self._model = {name: bool(model.get(name)) for name in stages}
        self._limit = {True: max_model, False: max_cpu}
        self._ready: dict[bool, list[tuple[int, int, str, str]]] = {True: [], False: []}
        self._inflight = {True: 0, False: 0}
        self._order = itertools.count()
        self.total = {name: 0 for name in stages}  # shards pushed, per stage
        self.finished = {name: 0 for name in stages}  # shards ended (committed or failed), per stage

    def push(self, stage: str, shard: str) -> None:
        """A shard of ``stage`` is ready (its inputs are committed)."""
        lane = self._model[stage]
        heapq.heappush(self._ready[lane], (-self._rank[stage], next(self._order), stage, shard))
        self.total[stage] += 1

    def take(self) -> list[tuple[str, str]]:
        """Every ready (stage, shard) that may start now, marked in flight, in start order."""
        out = []
        for lane in (True, False):
            while self._ready[lane] and self._inflight[lane] < self._limit[lane]:
                _, _, stage, shard = heapq.heappop(self._ready[lane])
                self._inflight[lane] += 1
                out.append((stage, shard))
        return out

    def finish(self, stage: str) -> None:
        """A shard of ``stage`` that was in flight ended (committed or failed): its slot is free."""
        lane = self._model[stage]
        if self._inflight[lane] < 1:
            raise ValueError(f"no {stage} shard is in flight")
        self._inflight[lane] -= 1
        self.finished[stage] += 1

    @property
    def pending(self) -> bool:
        """Whether any shard is ready or in flight."""
        return any(self._ready.values()) or any(self._inflight.values())


def parts(groups: Iterable[Sequence[S]], backends: Callable[[S], Sequence], fits: Callable[[list], bool]) -> list[list[S]]:
    """Cut each group where the next stage's backends cannot run beside the backends of the
    stages before it in its part (``fits``: declared resources against the cluster): the
    stages after the cut wait for the part before them, whose engines are freed first. On a
    cluster that holds them all, each group is one part; a group is never merged with another."""
    out: list[list[S]] = []
    for group in groups:
        out.append([])
        held: list = []
        for st in group:
            mine = list(backends(st))
            if mine and held and not fits(held + mine):
                out.append([])
                held = []
            out[-1].append(st)
            held += mine
    return [p for p in out if p]


def keep_after(plan: Sequence[Sequence[S]], k: int, backends: Callable[[S], Sequence]) -> list:
    """The backends the parts after part ``k`` of ``plan`` need: every other engine can be freed."""
    return [b for p in plan[k + 1:] for st in p for b in backends(st)]

