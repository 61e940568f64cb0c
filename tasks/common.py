"""What every stage wrapper shares: the run context, the shard fingerprint, validate-then-commit.

A stage wrapper is a few lines::

    ctx = RunContext.open(run_dir)
    fp = ctx.fingerprint(__name__, config_hash, [("problems", "seeds", shard)])  # what the shard is computed from
    if ctx.is_done(STAGE, shard, fp):                                   # the one truth for resume
        return ...
    out = pure_stage_function(inputs..., ctx.cfg.<its section>, engine)  # {table: pa.Table}
    ctx.commit(STAGE, shard, out, fp, problems=...)

``commit`` is the write path of every stage: for each output table in order, run the
table's GX suite (with the derived checks of ``tasks.checks``), write the rows that fail
to ``quarantine`` with the expectations they failed and the suite results to
``validation``, then write the good rows; last, the stage's shard marker records the
fingerprint. When a table's failure share passes ``validation.max_failure_share`` the
commit raises ``ValidationFailed`` after quarantine and results are written, without
marking the shard done, so a resume recomputes it (and fails again until something changes).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from infra.backends.base import BackendError, DeadlineExceeded
from infra.config import RunConfig, SearchConfig
from infra.cost import Cost
from infra.prompts import load_template
from infra.schemas import from_rows
from infra.storage import RunStore
from infra.validation import ValidationFailed, validate
from tasks.checks import PROCESS_COLUMN, process_failures, row_checks
from tasks.code_version import code_version
from tasks.engine import Engine
from tasks.rows import quarantine_rows
from tasks.scorers import build_scorer


def commit_config(tables: tuple[str, ...]) -> tuple[str, ...]:
    """The config paths that committing ``tables`` reads (``RunContext.persist`` and the seeds'
    writer): the failure-share gate for every table; for pairs and SFT rows also process
    verification (``validation.max_wrong_steps`` over steps cut at ``search.step_separator``)
    and the solve prompt they are checked against (``generation.prompt_template``). A stage
    that commits through these adds them to its fingerprint's config (``flows.stages``)."""
    paths = ["validation.max_failure_share"]
    if set(tables) & set(PROCESS_COLUMN):
        paths += ["validation.max_wrong_steps", "search.step_separator", "generation.prompt_template"]
    return tuple(paths)


def is_transient(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry only infrastructure failures (the backend), never bad data or bugs,
    nor a ``DeadlineExceeded`` (the deadline bounds the shard's total wait; a retry would multiply it)."""
    try:
        state.result()
    except DeadlineExceeded:
        return False
    except BackendError:
        return True
    except Exception:
        return False
    return False


@dataclass(frozen=True)
class RunContext:
    store: RunStore
    cfg: RunConfig

    @classmethod
    def open(cls, run_dir: str) -> RunContext:
        store = RunStore.at(run_dir)
        return cls(store, RunConfig.model_validate(store.load_config()))

    @property
    def run_id(self) -> str:
        return self.store.run_id

    def fingerprint(self, module: str, config_hash: str, inputs: list[tuple]) -> dict:
        """What a shard is computed from: the stage's config hash, the code version of its task's
        ``module`` (its ``__name__``: the code it reaches, ``tasks.code_version``) and the content
        hash of its committed inputs (``(table, stage or None[, shard])`` each)."""
        return {"config": config_hash, "code": code_version(module), "inputs": self.store.content_hash(inputs)}

    def is_done(self, stage: str, shard: str, fingerprint: dict) -> bool:
        """Whether the shard is committed from exactly ``fingerprint``. When it is not, the
        caller recomputes it, so its old commit (if any) is withdrawn first: its old parts stop
        counting until the new ``commit``."""
        if self.store.stage_done(stage, shard, fingerprint):
            return True
        self.store.unmark_stage(stage, shard)
        return False

    def engine(self, backend_cfg, config_hash: str, search: SearchConfig | None = None, cost: Cost | None = None) -> Engine:
        """The run's Ray pool of ``backend_cfg`` (built once per run, shared by every stage that
        names this backend) as an ``Engine`` for one shard; a PRM scorer's reward pool is the
        run's too (``flows.stages`` declares it among the stage's ``backends``). Every pool call the engine makes
        (the search, a rollout scorer's samples, a PRM pool's rewards) is added to ``cost``,
        the shard's, which its ``commit`` records."""
        from infra.pool import get_pool

        cfg = self.cfg
        search = search or cfg.search
        pool = get_pool(backend_cfg, cfg.pool, str(self.store.run_dir))
        generate = functools.partial(pool.generate, cost=cost)
        return Engine(generate, build_scorer(cfg.scorer, generate, search, cfg.seed, cfg.pool, cost, str(self.store.run_dir)), search, cfg.seed,
                      cfg.scorer.unknown_score, pool.model_name, self.run_id, config_hash)

    def persist(self, table_name: str, stage: str, shard: str, table: pa.Table, problems: pa.Table | None = None, **meta) -> Path:
        """Process-verify, then validate one output table; write quarantine + validation
        results + good rows (``meta`` goes into the good rows' marker). Quarantine and suite
        results count at once, also for a shard whose commit then fails its gate: they say why."""
        why = process_failures(table_name, table, self.cfg.validation.max_wrong_steps, self.cfg.search.step_separator)
        failed = [{"row": table.slice(i, 1).to_pylist()[0], "check": "process_verification", "reason": w}
                  for i, w in enumerate(why) if w]
        table = table.filter(pa.array([w is None for w in why], pa.bool_())) if failed else table
        extra = row_checks(table_name, table, problems, load_template(self.cfg.generation.prompt_template))
        outcome = validate(table_name, table, extra)
        store = self.store
        store.write("quarantine", f"{stage}-{table_name}", shard,
                    quarantine_rows(self.run_id, stage, table_name, failed + outcome.bad_rows))
        store.write(
            "validation", f"{stage}-{table_name}", shard,
            from_rows([{"run_id": self.run_id, "stage": stage, "table": table_name, "shard": shard, **r} for r in outcome.results], "validation"),
        )
        limit = self.cfg.validation.max_failure_share
        if outcome.failure_share > limit:  # the shard is not committed: a resume recomputes it and fails again
            raise ValidationFailed(
                f"{table_name}/{stage}/{shard}: {len(outcome.bad_rows)} of {table.num_rows} rows failed their suite "
                f"({outcome.failure_share:.1%} > {limit:.1%}); see the quarantine table"
            )
        return store.write(table_name, stage, shard, outcome.good, **meta)

    def commit(self, stage: str, shard: str, outputs: dict[str, pa.Table], fingerprint: dict,
               problems: pa.Table | None = None, extra: dict | None = None, cost: Cost | None = None) -> str:
        """Persist every output table in order (chains before the pairs that point at them),
        then mark the shard done with its fingerprint: that one marker commits all its tables
        together (their parts name it; ``extra`` goes into it, and a model stage's ``cost``
        as its ``cost`` record, ``infra.cost``). Returns the first table's part path."""
        extra = {**(extra or {}), **({"cost": cost.record()} if cost is not None else {})}
        self.store.unmark_stage(stage, shard)
        paths = [self.persist(name, stage, shard, table, problems, fingerprint=fingerprint, commit=f"{stage}.{shard}")
                 for name, table in outputs.items()]
        self.store.mark_stage_done(stage, shard, fingerprint, list(outputs), **extra)
        return str(paths[0])
