"""Seed problems: the built-in generator, or GSM8K/MATH-style JSONL and Parquet files.

``seed_batches(cfg, run_id)`` streams the seeds as (problems, quarantine) batches, pure
given the files; ``load_seeds`` is all of them at once. A row that cannot become a problem
(over the size limit, not UTF-8, not JSON, not an object, missing or empty question,
missing answer, gold answer that cannot be parsed, a gold that is not valid for its format
(``tasks.answers.check_gold``: a GSM8K gold that is not a number, a MATH gold with
unbalanced braces...), a duplicate of an earlier problem) goes to ``quarantine`` with the
check that failed, a reason and its source (``path:line``); the rest load. Problem ids
are content hashes of (question, gold).

``seeds_task`` is the stage: it hands the batches to ``tasks.seed_shards.SeedShardWriter``,
which writes validated ``problems`` shards as they fill.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.config import BuiltinSeeds, FileSeeds, RunConfig
from infra.schemas import from_rows, stable_id
from infra.storage import RunStore, file_sha256
from infra.tiny.worldgen import Difficulty, generate
from tasks.answers import ANSWER_RE, check_gold, last_boxed, normalize_gold
from tasks.common import RunContext
from tasks.seed_ids import ProblemIdSet
from tasks.seed_shards import SeedShardWriter, shard_key

STAGE = "seeds"

QUARANTINE_ROW_CHARS = 4000
SUFFIXES = (".jsonl", ".json", ".ndjson", ".parquet")
BATCH_ROWS = 5_000  # rows read before their duplicates are settled and the batch is handed on
BATCH_CHARS = 32 << 20  # ... or fewer, once their text passes this many characters
_INTEGER = re.compile(r"-?\d{1,18}")  # a GSM8K gold that check_gold always accepts (the common case, checked fast)


class SeedError(ValueError):
    """A seed source cannot be read at all (missing file, unknown extension)."""


class RowRejected(ValueError):
    def __init__(self, check: str, reason: str):
        super().__init__(reason)
        self.check = check


def problem_id(question: str, gold: str) -> str:
    return stable_id("problem", question.strip(), gold.strip())


def builtin_problems(cfg: BuiltinSeeds, run_id: str) -> pa.Table:
    d = Difficulty(cfg.min_steps, cfg.max_steps, cfg.max_start, cfg.max_operand, cfg.max_value, cfg.allow_mul)
    rows, seen = [], set()
    for i, p in enumerate(generate(cfg.n, cfg.seed, d)):
        pid = problem_id(p.question, str(p.answer))
        if pid in seen:  # the generator can repeat a short problem; ids stay unique
            pid = stable_id(pid, i)
        seen.add(pid)
        rows.append(
            {
                "run_id": run_id,
                "problem_id": pid,
                "source": f"builtin:seed={cfg.seed}",
                "source_id": str(i),
                "question": p.question,
                "gold_answer": str(p.answer),
                "reference_solution": p.solution,
                "n_ops": p.n_ops,
            }
        )
    return from_rows(rows, "problems")


def _loads(text: str):
    """``json.loads``, through orjson (a Prefect dependency, ~3x faster) when it accepts the
    text; anything orjson refuses (NaN, integers past 64 bits...) is decided by ``json``, so
    what loads and every rejection's message are exactly ``json``'s."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _raw_rows(path: Path, max_bytes: int) -> Iterator[tuple[str, dict | None, str | None, RowRejected | None]]:
    """(source, row, raw text, rejection) for every row of a file."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        pf = pq.ParquetFile(path)
        n = 0
        for batch in pf.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                n += 1
                yield f"{path}:{n}", row, None, None
        return
    if suffix not in SUFFIXES:
        raise SeedError(f"{path}: unsupported seed file type {suffix!r} (use .jsonl or .parquet)")
    with open(path, "rb") as f:
        for n, line in enumerate(f, start=1):
            src = f"{path}:{n}"
            if not line.strip():
                continue
            if len(line) > max_bytes:
                yield src, None, line[:QUARANTINE_ROW_CHARS].decode("utf-8", "replace"), RowRejected(
                    "row_too_large", f"row is {len(line):,} bytes, limit {max_bytes:,}"
                )
                continue
            try:
                text = line.decode("utf-8-sig" if n == 1 else "utf-8")  # a byte-order mark may open the file
            except UnicodeDecodeError as e:
                yield src, None, line.decode("utf-8", "replace"), RowRejected("not_utf8", f"not UTF-8: {e.reason} at byte {e.start}")
                continue
            try:
                row = _loads(text)
            except json.JSONDecodeError as e:
                yield src, None, text, RowRejected("invalid_json", f"not JSON: {e.msg} at column {e.colno}")
                continue
            if not isinstance(row, dict):
                yield src, None, text, RowRejected("not_an_object", f"expected a JSON object, got {type(row).__name__}")
                continue
            yield src, row, text, None


def _gold(cfg: FileSeeds, answer: str) -> str:
    if cfg.format == "gsm8k":
        m = ANSWER_RE.findall(answer)
        gold = normalize_gold(m[-1]) if m else None
        if gold is None:
            raise RowRejected("unparseable_gold", f"no '#### <answer>' in {cfg.answer_field!r}")
    else:
        boxed = last_boxed(answer)
        gold = normalize_gold(boxed) if boxed else None
        if gold is None:
            raise RowRejected("unparseable_gold", f"no \\boxed{{...}} answer in {cfg.answer_field!r}")
    why = None if cfg.format == "gsm8k" and _INTEGER.fullmatch(gold) else check_gold(gold, cfg.format)
    if why:
        raise RowRejected("invalid_gold", why)
    return gold


def _problem(cfg: FileSeeds, row: dict) -> tuple[str, str, str, str | None]:
    q, a = row.get(cfg.question_field), row.get(cfg.answer_field)
    if q is None:
        raise RowRejected("missing_question", f"field {cfg.question_field!r} is missing")
    if not isinstance(q, str) or not q.strip():
        raise RowRejected("empty_question", f"field {cfg.question_field!r} is empty or not text")
    if a is None:
        raise RowRejected("missing_answer", f"field {cfg.answer_field!r} is missing")
    a = str(a)
    sid = row.get(cfg.id_field) if cfg.id_field else None
    return q.strip(), _gold(cfg, a), a, None if sid is None else str(sid)


def _bad(run_id: str, src: str, rejected: RowRejected, raw: str | None, row: dict | None) -> dict:
    text = raw if raw is not None else json.dumps(row, default=str, ensure_ascii=False)
    return {"run_id": run_id, "stage": STAGE, "table": "problems", "source": src, "check": rejected.check,
            "reason": str(rejected), "row": text[:QUARANTINE_ROW_CHARS]}


def _parse(cfg: FileSeeds, run_id: str, src: str, row: dict | None, raw: str | None,
           rejected: RowRejected | None) -> dict:
    """One row checked on its own: ``{"bad": quarantine row}`` or ``{"problem": problems row}``
    (plus what a duplicate's quarantine row needs). Duplicates are found later, a batch at a time."""
    if rejected is None:
        try:
            q, gold, solution, sid = _problem(cfg, row)
        except RowRejected as e:
            rejected = e
    if rejected is not None:
        return {"bad": _bad(run_id, src, rejected, raw, row)}
    problem = {"run_id": run_id, "problem_id": problem_id(q, gold), "source": src, "source_id": sid, "question": q,
               "gold_answer": gold, "reference_solution": solution, "n_ops": None}
    return {"problem": problem, "raw": None if raw is None else raw[:QUARANTINE_ROW_CHARS], "row": row if raw is None else None}


def _settle(pending: list[dict], seen: ProblemIdSet, run_id: str, limit: int | None) -> tuple[list[dict], list[dict]]:
    """(problems, quarantine rows) of a batch in file order: a problem whose id is in ``seen``
    or earlier in the batch is a ``duplicate_problem``; at most ``limit`` problems are taken
    and the rows after the last one taken are dropped. The taken ids join ``seen``."""
    ids = [p["problem"]["problem_id"] for p in pending if "problem" in p]
    known = iter(seen.contains(ids).tolist())
    rows, bad, batch = [], [], set()
    for p in pending:
        if "bad" in p:
            bad.append(p["bad"])
            continue
        pid = p["problem"]["problem_id"]
        if next(known) or pid in batch:
            why = RowRejected("duplicate_problem", f"same question and gold as an earlier row (problem {pid})")
            bad.append(_bad(run_id, p["problem"]["source"], why, p["raw"], p["row"]))
            continue
        batch.add(pid)
        rows.append(p["problem"])
        if limit is not None and len(rows) >= limit:
            break
    seen.add(list(batch))
    return rows, bad


def _check_paths(cfg: FileSeeds) -> list[Path]:
    """The seed files, checked before anything is read: SeedError for a missing file or an unknown type."""
    paths = [Path(p) for p in cfg.paths]
    for path in paths:
        if not path.is_file():
            raise SeedError(f"seed file not found: {path}")
        if path.suffix.lower() not in SUFFIXES:
            raise SeedError(f"{path}: unsupported seed file type {path.suffix.lower()!r} (use .jsonl or .parquet)")
    return paths


def file_batches(cfg: FileSeeds, run_id: str, batch_rows: int | None = None) -> Iterator[tuple[pa.Table, pa.Table]]:
    """The rows of the seed files as (problems, quarantine) batches, in file order.

    Each batch covers at most ``batch_rows`` (default ``BATCH_ROWS``) rows (fewer when their text passes
    ``BATCH_CHARS``); memory is bounded by a batch plus 10 bytes per problem (the ids seen,
    ``ProblemIdSet``). ``cfg.limit`` caps the problems over all files: reading stops at the
    row that reaches it. The concatenated batches do not depend on ``batch_rows``."""
    paths = _check_paths(cfg)
    batch_rows = batch_rows or BATCH_ROWS
    seen, left = ProblemIdSet(), cfg.limit
    pending: list[dict] = []
    chars = candidates = 0
    for path in paths:
        for src, row, raw, rejected in _raw_rows(path, cfg.max_row_bytes):
            p = _parse(cfg, run_id, src, row, raw, rejected)
            pending.append(p)
            chars += len(raw or "") + (len(p["problem"]["question"]) + len(p["problem"]["reference_solution"]) if "problem" in p else 0)
            candidates += "problem" in p
            if len(pending) >= batch_rows or chars >= BATCH_CHARS or (left is not None and candidates >= left):
                rows, bad = _settle(pending, seen, run_id, left)
                yield from_rows(rows, "problems"), from_rows(bad, "quarantine")
                if left is not None:
                    left -= len(rows)
                    if left <= 0:
                        return
                pending, chars, candidates = [], 0, 0
    if pending:
        rows, bad = _settle(pending, seen, run_id, left)
        yield from_rows(rows, "problems"), from_rows(bad, "quarantine")


def seed_batches(cfg: BuiltinSeeds | FileSeeds, run_id: str, batch_rows: int | None = None) -> Iterator[tuple[pa.Table, pa.Table]]:
    """(problems, quarantine) batches of any seed source (built-in seeds: one batch)."""
    if isinstance(cfg, BuiltinSeeds):
        yield builtin_problems(cfg, run_id), from_rows([], "quarantine")
        return
    yield from file_batches(cfg, run_id, batch_rows)


def load_seeds(cfg: BuiltinSeeds | FileSeeds, run_id: str) -> tuple[pa.Table, pa.Table]:
    """All the seeds at once: (problems, quarantine). For small sources (evaluation sets, benches);
    the seeds stage streams ``seed_batches`` instead."""
    batches = list(seed_batches(cfg, run_id))
    return (pa.concat_tables([b[0] for b in batches] or [from_rows([], "problems")]),
            pa.concat_tables([b[1] for b in batches] or [from_rows([], "quarantine")]))


def source_hash(cfg: BuiltinSeeds | FileSeeds) -> str:
    """Content hash of the seed files (built-in seeds: none; their config is the source)."""
    if isinstance(cfg, BuiltinSeeds):
        return ""
    return ",".join(file_sha256(Path(p)) if Path(p).is_file() else f"missing:{p}" for p in cfg.paths)


def shard_problems(problems: pa.Table, size: int, first: int = 0) -> dict[str, pa.Table]:
    """Consecutive shards of ``size`` problems, keyed ``shard_key(first)``, ``shard_key(first + 1)``, ..."""
    return {shard_key(first + k): problems.slice(start, size) for k, start in enumerate(range(0, problems.num_rows, size))}


def manifest_shards(run_dir: str) -> list[str]:
    """The problems shards of the run (the generation stage's shards)."""
    store = RunStore.at(run_dir)
    manifest = store.run_dir / "_done" / f"{STAGE}.manifest.json"
    return store.read_record(manifest).get("shards", []) if manifest.is_file() else []


@task(name=STAGE, task_run_name=STAGE + "-{shard}", cache_policy=NO_CACHE)
def seeds_task(run_dir: str, shard: str, config_hash: str) -> str:
    """Stream the seeds, quarantine bad rows, write validated ``problems`` shards of
    ``generation.shard_size`` as they fill (a shard whose marker has this fingerprint is
    kept, not rewritten) and, last, ``_done/seeds.manifest.json`` listing them; shards of
    an earlier, different sharding are moved aside. Returns the manifest path."""
    ctx = RunContext.open(run_dir)
    cfg: RunConfig = ctx.cfg
    fp = {**ctx.fingerprint(__name__, config_hash, []), "source": source_hash(cfg.seeds)}
    manifest = ctx.store.run_dir / "_done" / f"{STAGE}.manifest.json"
    if not ctx.is_done(STAGE, shard, fp) or not manifest.is_file():  # a manifest moved aside (damaged) is written anew
        with SeedShardWriter(ctx, STAGE, fp, cfg.generation.shard_size) as writer:
            for problems, bad in seed_batches(cfg.seeds, ctx.run_id):
                writer.add(problems, bad)
            done = writer.close()
        if done.problems == 0:
            raise SeedError(f"no valid problems in the seeds: {done.quarantined} rows quarantined (sphere query "
                            f"\"select source, reason from quarantine where run_id = '{ctx.run_id}'\")")
        ctx.store.write_json(f"_done/{STAGE}.manifest.json", {"shards": done.shards, "problems": done.problems, "quarantined": done.quarantined})
        ctx.store.mark_stage_done(STAGE, shard, fp, [])
    return str(ctx.store.run_dir / "_done" / f"{STAGE}.manifest.json")
