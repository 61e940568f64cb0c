"""Seed problems: the built-in generator, or GSM8K/MATH-style JSONL and Parquet files.

``load_seeds(cfg, run_id) -> (problems, quarantine)`` is pure given the files. A row that
cannot become a problem (over the size limit, not UTF-8, not JSON, not an object, missing
or empty question, missing answer, gold answer that cannot be parsed, a gold that is not
valid for its format (``tasks.answers.check_gold``: a GSM8K gold that is not a number, a
MATH gold with unbalanced braces...), a duplicate of an earlier problem) goes to ``quarantine`` with the check that failed, a reason and its
source (``path:line``); the rest load. Problem ids are content hashes of (question, gold).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.config import BuiltinSeeds, FileSeeds, RunConfig
from infra.schemas import from_rows, stable_id
from infra.storage import file_sha256
from infra.tiny.worldgen import Difficulty, generate
from tasks.answers import ANSWER_RE, check_gold, last_boxed, normalize_gold
from tasks.common import RunContext

STAGE = "seeds"

QUARANTINE_ROW_CHARS = 4000


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
    if suffix not in (".jsonl", ".json", ".ndjson"):
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
                row = json.loads(text)
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
    why = check_gold(gold, cfg.format)
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


def file_problems(cfg: FileSeeds, run_id: str) -> tuple[pa.Table, pa.Table]:
    rows, bad, seen = [], [], set()
    for p in cfg.paths:
        path = Path(p)
        if not path.is_file():
            raise SeedError(f"seed file not found: {path}")
        for src, row, raw, rejected in _raw_rows(path, cfg.max_row_bytes):
            if rejected is None:
                try:
                    q, gold, solution, sid = _problem(cfg, row)
                    pid = problem_id(q, gold)
                    if pid in seen:
                        raise RowRejected("duplicate_problem", f"same question and gold as an earlier row (problem {pid})")
                except RowRejected as e:
                    rejected = e
            if rejected is not None:
                text = raw if raw is not None else json.dumps(row, default=str, ensure_ascii=False)
                bad.append(
                    {
                        "run_id": run_id,
                        "stage": "seeds",
                        "table": "problems",
                        "source": src,
                        "check": rejected.check,
                        "reason": str(rejected),
                        "row": text[:QUARANTINE_ROW_CHARS],
                    }
                )
                continue
            seen.add(pid)
            rows.append(
                {
                    "run_id": run_id,
                    "problem_id": pid,
                    "source": src,
                    "source_id": sid,
                    "question": q,
                    "gold_answer": gold,
                    "reference_solution": solution,
                    "n_ops": None,
                }
            )
            if cfg.limit and len(rows) >= cfg.limit:
                break
    return from_rows(rows, "problems"), from_rows(bad, "quarantine")


def load_seeds(cfg: BuiltinSeeds | FileSeeds, run_id: str) -> tuple[pa.Table, pa.Table]:
    if isinstance(cfg, BuiltinSeeds):
        return builtin_problems(cfg, run_id), from_rows([], "quarantine")
    return file_problems(cfg, run_id)


def source_hash(cfg: BuiltinSeeds | FileSeeds) -> str:
    """Content hash of the seed files (built-in seeds: none; their config is the source)."""
    if isinstance(cfg, BuiltinSeeds):
        return ""
    return ",".join(file_sha256(Path(p)) if Path(p).is_file() else f"missing:{p}" for p in cfg.paths)


def shard_problems(problems: pa.Table, size: int) -> dict[str, pa.Table]:
    """Consecutive shards of ``size`` problems, keyed ``00000``, ``00001``, ..."""
    return {f"{k:05d}": problems.slice(start, size) for k, start in enumerate(range(0, problems.num_rows, size))}


def manifest_shards(run_dir: str) -> list[str]:
    """The problems shards of the run (the generation stage's shards)."""
    manifest = Path(run_dir) / "_done" / f"{STAGE}.manifest.json"
    return json.loads(manifest.read_text())["shards"] if manifest.is_file() else []


@task(name=STAGE, task_run_name=STAGE + "-{shard}", cache_policy=NO_CACHE)
def seeds_task(run_dir: str, shard: str, config_hash: str) -> str:
    """Load seeds, quarantine bad rows, write validated ``problems`` shards of
    ``generation.shard_size`` and ``_done/seeds.manifest.json`` listing them; shards of an
    earlier, different sharding are moved aside. Returns the manifest path."""
    ctx = RunContext.open(run_dir)
    cfg: RunConfig = ctx.cfg
    fp = {**ctx.fingerprint(config_hash, []), "source": source_hash(cfg.seeds)}
    if not ctx.is_done(STAGE, shard, fp):
        problems, bad = load_seeds(cfg.seeds, ctx.run_id)
        ctx.store.write("quarantine", "seeds-parse", "00000", bad, fingerprint=fp)
        if problems.num_rows == 0:
            raise SeedError(f"no valid problems in the seeds: {bad.num_rows} rows quarantined (sphere query "
                            f"\"select source, reason from quarantine where run_id = '{ctx.run_id}'\")")
        shards = shard_problems(problems, cfg.generation.shard_size)
        for sh, part in shards.items():
            ctx.persist("problems", STAGE, sh, part, fingerprint=fp)
        ctx.store.prune("problems", STAGE, list(shards))
        ctx.store.write_json(f"_done/{STAGE}.manifest.json", {"shards": list(shards), "problems": problems.num_rows, "quarantined": bad.num_rows})
        ctx.store.mark_stage_done(STAGE, shard, fp, [])
    return str(ctx.store.run_dir / "_done" / f"{STAGE}.manifest.json")
