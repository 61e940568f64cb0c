"""What a stage's engine calls cost: tokens, requests and engine-seconds, per committed shard.

A model stage's shard task makes one ``Cost`` and passes it explicitly to every pool call
it makes (``EnginePool.generate(requests, cost=...)``, ``EnginePool.reward(texts, cost=...)``,
through ``RunContext.engine(..., cost=)`` or directly); the pool adds each answered call to
it. The shard's commit stores ``cost.record()`` in its stage marker
(``_done/stages/<stage>.<shard>.json``, key ``cost``), and ``run_cost`` sums the records of
the shards committed now. So a run's cost is cumulative over every invocation that made
its committed data, and exact after a resume: a shard kept from an earlier invocation
keeps its record, a recomputed shard replaces it, and work that was never committed (a
shard killed, failed or retried mid-way) is not counted.

The fields of one record:

- ``requests``: generation requests (one prompt, ``n`` samples) or texts sent for reward.
- ``completions``: samples returned (a request with ``n=5`` returns five).
- ``prompt_tokens``: prompt tokens the backend reports per request (prompt and prefix as
  rendered, counted once per request whatever its ``n``); for a reward call, the rows the
  model returned (one per token scored, or one per step tag under STEP pooling).
- ``completion_tokens``: tokens generated, summed over every sample returned, including the
  candidates the search then discards (so more than the chains' ``completion_tokens``,
  which count only the chosen steps).
- ``engine_seconds``: the sum, over every chunk of the shard's calls that an actor
  answered, of the wall time that actor spent in its backend on the chunk (measured on the
  actor). An actor serves one chunk at a time, so this is engine time attributable to the
  stage: one actor busy for 2 s on this stage's chunks adds 2 s, two actors in parallel add
  4 s. A chunk lost with a dead or timed-out actor is not counted.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

FIELDS = ("requests", "completions", "prompt_tokens", "completion_tokens", "engine_seconds")


@dataclass
class Cost:
    """One shard's running totals (thread-safe: a shard's calls may overlap)."""

    requests: int = 0
    completions: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    engine_seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add_generation(self, results: list, seconds: float) -> None:
        """Add one answered ``generate`` call: its ``GenResult`` list and its engine-seconds."""
        with self._lock:
            self.requests += len(results)
            self.completions += sum(len(r.completions) for r in results)
            self.prompt_tokens += sum(r.prompt_tokens for r in results)
            self.completion_tokens += sum(c.completion_tokens for r in results for c in r.completions)
            self.engine_seconds += seconds

    def add_reward(self, rewards: list[list[float]], seconds: float) -> None:
        """Add one answered ``reward`` call: one per-token reward list per text scored."""
        with self._lock:
            self.requests += len(rewards)
            self.prompt_tokens += sum(len(r) for r in rewards)
            self.engine_seconds += seconds

    def record(self) -> dict:
        """The JSON record a shard's commit stores (``engine_seconds`` to the microsecond)."""
        with self._lock:
            return {"requests": self.requests, "completions": self.completions, "prompt_tokens": self.prompt_tokens,
                    "completion_tokens": self.completion_tokens, "engine_seconds": round(self.engine_seconds, 6)}


def run_cost(store) -> dict[str, dict]:
    """Per stage, the sum of the cost records of its committed shards (``RunStore.stage_done``),
    stages in the order of their first commit, plus ``shards``: how many records were summed.
    A stage that never called an engine pool records nothing and is absent."""
    out: dict[str, dict] = {}
    first: dict[str, float] = {}
    for path in sorted((store.run_dir / "_done" / "stages").glob("*.json")):
        stage, _, shard = path.name.removesuffix(".json").partition(".")
        if not store.stage_done(stage, shard):
            continue
        marker = store.stage_marker(stage, shard) or {}
        rec = marker.get("cost")
        if rec is None:
            continue
        total = out.setdefault(stage, {**dict.fromkeys(FIELDS, 0), "shards": 0})
        for k in FIELDS:
            total[k] += rec.get(k, 0)
        total["shards"] += 1
        first[stage] = min(first.get(stage, float("inf")), marker.get("written_at", 0.0))
    for total in out.values():
        total["engine_seconds"] = round(total["engine_seconds"], 3)
    return {st: out[st] for st in sorted(out, key=lambda s: first[s])}


def cost_rows(cost: dict[str, dict]) -> list[dict]:
    """``run_cost``'s mapping as rows (stage first) for tables: report, Prefect artifact."""
    return [{"stage": stage, **{k: c[k] for k in (*FIELDS, "shards")}} for stage, c in cost.items()]
