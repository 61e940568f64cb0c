"""The seeds stage's writer: problems shards written as they fill, validated a block at a time.

``SeedShardWriter(ctx, stage, fingerprint, shard_size)`` takes (problems, quarantine)
batches in order (``add``) and ``close()``s with what it wrote (``SeedsWritten``):

* ``problems/<stage>/part-<shard>``: consecutive shards of ``shard_size`` problems, keyed
  ``00000``, ``00001``, ... (the last may be short), the same rows and files as slicing the
  whole table would give.
* The problems suite (``infra.validation``) runs once per block of whole shards
  (``VALIDATE_ROWS`` problems) instead of once per shard; a block's suite results go to
  ``validation/<stage>-problems/part-<first shard>`` (``shard`` column: ``first-last``) and
  the rows that fail it to ``quarantine/<stage>-problems/part-<first shard>``. A shard
  keeps the rows of the block that passed; when its failure share passes
  ``validation.max_failure_share``, ``ValidationFailed`` is raised and it is not committed.
* ``quarantine/<stage>-parse/part-00000``, ``00001``, ...: the parse rejects, at most
  ``QUARANTINE_ROWS`` a part (at least one part, maybe empty).

Every part is written with ``RunStore.write`` (atomic, then its marker) carrying
``fingerprint``. A part whose marker already has that fingerprint is not rewritten (the
content is a function of the seed files and config, which the fingerprint covers), and a
block whose shards and suite results are all committed skips its suite: a resume after a
kill re-reads the seeds but writes only what is missing. ``close`` moves aside parts left
from an earlier, different sharding. Writes run on ``WRITE_THREADS`` threads (they wait
on fsync), at most ``IN_FLIGHT`` at once; the first failed write is raised. Use it as a
context manager, so that an error stops its threads.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa

from infra.schemas import from_rows
from infra.validation import ValidationFailed, validate
from tasks.common import RunContext
from tasks.rows import quarantine_rows

TABLE = "problems"
VALIDATE_ROWS = 10_000  # problems per suite run (rounded down to whole shards)
QUARANTINE_ROWS = 10_000  # parse rejects per quarantine part
WRITE_THREADS = 8
IN_FLIGHT = 64  # writes queued or running at once (bounds the memory they hold)


def shard_key(k: int) -> str:
    return f"{k:05d}"


@dataclass
class SeedsWritten:
    shards: list[str] = field(default_factory=list)  # every problems shard, in order
    problems: int = 0  # problems in them
    quarantined: int = 0  # parse rejects (the rows that failed the suite are counted in validation)


class SeedShardWriter:
    """Streams seed batches into committed shards; see the module docstring."""

    def __init__(self, ctx: RunContext, stage: str, fingerprint: dict, shard_size: int):
        self.ctx, self.stage, self.fp, self.size = ctx, stage, fingerprint, shard_size
        self.block_rows = max(shard_size, VALIDATE_ROWS // shard_size * shard_size)
        self.out = SeedsWritten()
        self._problems: list[pa.Table] = []
        self._n_problems = 0
        self._bad: list[pa.Table] = []
        self._n_bad = 0
        self._blocks: list[str] = []
        self._bad_parts: list[str] = []
        self._pool = ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="sphere-seeds-write")
        self._inflight: deque[Future] = deque()

    def __enter__(self) -> SeedShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """On an error, let running writes finish (each is atomic), drop queued ones, stop the threads."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def add(self, problems: pa.Table, bad: pa.Table) -> None:
        """Take the next batch; write every block and quarantine part that is now full."""
        if problems.num_rows:
            self._problems.append(problems)
            self._n_problems += problems.num_rows
        if bad.num_rows:
            self._bad.append(bad)
            self._n_bad += bad.num_rows
        while self._n_problems >= self.block_rows:
            self._block(self._take("_problems", "_n_problems", self.block_rows))
        while self._n_bad >= QUARANTINE_ROWS:
            self._bad_part(self._take("_bad", "_n_bad", QUARANTINE_ROWS))

    def close(self) -> SeedsWritten:
        """Write what is left, wait for every write, move aside stale parts. Raises the first failed write."""
        try:
            if self._n_problems:
                self._block(self._take("_problems", "_n_problems", self._n_problems))
            if self._n_bad or not self._bad_parts:
                self._bad_part(self._take("_bad", "_n_bad", self._n_bad) if self._n_bad else from_rows([], "quarantine"))
            while self._inflight:
                self._inflight.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
        store = self.ctx.store
        store.prune(TABLE, self.stage, self.out.shards)
        store.prune("quarantine", f"{self.stage}-parse", self._bad_parts)
        for table in ("quarantine", "validation"):
            store.prune(table, f"{self.stage}-{TABLE}", self._blocks)
        return self.out

    def _take(self, tables: str, count: str, n: int) -> pa.Table:
        """The first ``n`` buffered rows of ``self.<tables>``, removed from the buffer."""
        whole = pa.concat_tables(getattr(self, tables))
        rest = whole.slice(n)
        setattr(self, tables, [rest] if rest.num_rows else [])
        setattr(self, count, rest.num_rows)
        return whole.slice(0, n)

    def _done(self, table: str, stage: str, shard: str) -> bool:
        return self.ctx.store.is_done(table, stage, shard, self.fp)

    def _submit(self, table: str, stage: str, shard: str, rows: pa.Table) -> None:
        if self._done(table, stage, shard):
            return
        while len(self._inflight) >= IN_FLIGHT:
            self._inflight.popleft().result()
        self._inflight.append(self._pool.submit(self.ctx.store.write, table, stage, shard, rows, fingerprint=self.fp))

    def _bad_part(self, bad: pa.Table) -> None:
        key = shard_key(len(self._bad_parts))
        self._bad_parts.append(key)
        self.out.quarantined += bad.num_rows
        self._submit("quarantine", f"{self.stage}-parse", key, bad)

    def _block(self, block: pa.Table) -> None:
        """Validate a block of whole shards once; write its suite results, its failed rows and its shards."""
        first = len(self.out.shards)
        keys = [shard_key(first + k) for k in range(0, -(-block.num_rows // self.size))]
        self.out.shards += keys
        self._blocks.append(keys[0])
        suite_stage = f"{self.stage}-{TABLE}"
        if all(self._done(TABLE, self.stage, k) for k in keys) and all(
                self._done(t, suite_stage, keys[0]) for t in ("quarantine", "validation")):
            self.out.problems += sum(self.ctx.store.marker(TABLE, self.stage, k)["rows"] for k in keys)
            return
        block = block.combine_chunks()  # one buffer per column: a shard is a slice of it, as of the whole table
        outcome = validate(TABLE, block)
        run_id = self.ctx.run_id
        self._submit("quarantine", suite_stage, keys[0], quarantine_rows(run_id, self.stage, TABLE, outcome.bad_rows))
        label = f"{keys[0]}-{keys[-1]}"
        self._submit("validation", suite_stage, keys[0], from_rows(
            [{"run_id": run_id, "stage": self.stage, "table": TABLE, "shard": label, **r} for r in outcome.results], "validation"))
        failed = set(outcome.bad_positions)
        limit = self.ctx.cfg.validation.max_failure_share
        for k, key in enumerate(keys):
            start = k * self.size
            part = block.slice(start, self.size)
            keep = [i for i in range(part.num_rows) if start + i not in failed]
            n_bad = part.num_rows - len(keep)
            if n_bad / part.num_rows > limit:  # like RunContext.persist: the shard is not committed
                raise ValidationFailed(
                    f"{TABLE}/{self.stage}/{key}: {n_bad} of {part.num_rows} rows failed their suite "
                    f"({n_bad / part.num_rows:.1%} > {limit:.1%}); see the quarantine table")
            self.out.problems += len(keep)
            self._submit(TABLE, self.stage, key, part.take(pa.array(keep, pa.int64())) if n_bad else part)
