"""Great Expectations suites per table, run on every stage write.

``validate(table_name, table, extra) -> Outcome``: the table's suite (its entry in ``SUITES``;
a table without one is written unchecked) runs on a pandas batch (GX's SQL datasource on
DuckDB is broken, GX issue 11579). Derived boolean columns let GX check rules that span
columns or lists: the structural ones are computed here (``DERIVED``: ``_n_steps_ok``,
``_chosen_ne_rejected``...), the ones that need answer checking or the
problems' gold answers (``_verdict_consistent``, ``_chosen_verified``...) are computed by
the caller (``tasks.checks``) and passed in ``extra``; an expectation on a derived column
runs only when the column is present.
Rows that fail any row-level expectation are split off for quarantine, with the names of
the expectations they failed; ``Outcome.results`` holds one record per expectation for
the ``validation`` table. The caller decides whether the failure share fails the stage.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd
import pyarrow as pa

_CTX = None
_CTX_LOCK = threading.Lock()
_VALIDATE_LOCK = threading.Lock()
_BATCH_DEFS: dict = {}


class ValidationFailed(RuntimeError):
    """More than the configured share of a stage's rows failed their suite."""


@dataclass
class Outcome:
    good: pa.Table
    bad_rows: list[dict]  # each: the row (as dict), "check", "reason"
    results: list[dict] = field(default_factory=list)
    bad_positions: list[int] = field(default_factory=list)  # row index in the input of each bad row, ascending

    @property
    def failure_share(self) -> float:
        total = self.good.num_rows + len(self.bad_rows)
        return len(self.bad_rows) / total if total else 0.0


def _context():
    global _CTX
    with _CTX_LOCK:
        if _CTX is None:
            import logging

            import great_expectations as gx
            from great_expectations.data_context.types.base import ProgressBarsConfig

            for name in ("great_expectations", "great_expectations.data_context.types.base"):  # the latter sets INFO itself
                logging.getLogger(name).setLevel(logging.WARNING)

            ctx = gx.get_context(mode="ephemeral")
            ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
            _CTX = ctx
        return _CTX


def preload() -> threading.Thread:
    """Import GX and build its context in the background (3-7 s of imports), so the
    first suite of a run does not wait for it."""
    t = threading.Thread(target=_context, name="sphere-gx-preload", daemon=True)
    t.start()
    return t


def _chain_derived(df: pd.DataFrame) -> pd.DataFrame:
    df["_n_steps_ok"] = [len(s) == n and len(sc) == n for s, sc, n in zip(df["steps"], df["step_scores"], df["n_steps"])]
    df["_scores_in_range"] = [all(0.0 <= x <= 1.0 for x in sc) for sc in df["step_scores"]]
    return df


def _pair_derived(df: pd.DataFrame) -> pd.DataFrame:
    df["_chosen_ne_rejected"] = [c != r for c, r in zip(df["chosen"], df["rejected"])]
    df["_both_nonempty"] = [isinstance(c, str) and bool(c.strip()) and isinstance(r, str) and bool(r.strip()) for c, r in zip(df["chosen"], df["rejected"])]
    return df


def _problems(gxe) -> list:
    return [
        gxe.ExpectColumnValuesToNotBeNull(column="problem_id"),
        gxe.ExpectColumnValuesToBeUnique(column="problem_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="question"),
        gxe.ExpectColumnValueLengthsToBeBetween(column="question", min_value=1),
        gxe.ExpectColumnValuesToNotBeNull(column="gold_answer"),
    ]


def _chains(gxe) -> list:
    return [
        gxe.ExpectColumnValuesToNotBeNull(column="chain_id"),
        gxe.ExpectColumnValuesToBeUnique(column="chain_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="problem_id"),
        gxe.ExpectColumnValuesToBeInSet(column="verdict", value_set=["correct", "wrong", "unknown", "no_answer", "error"]),
        gxe.ExpectColumnValuesToBeInSet(column="branch", value_set=["max", "min"]),
        gxe.ExpectColumnValuesToBeInSet(column="_verdict_consistent", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="_n_steps_ok", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="_scores_in_range", value_set=[True]),
    ]


def _pairs(gxe) -> list:
    return [
        gxe.ExpectColumnValuesToNotBeNull(column="pair_id"),
        gxe.ExpectColumnValuesToBeUnique(column="pair_id"),
        gxe.ExpectColumnValuesToBeInSet(column="_chosen_ne_rejected", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="_both_nonempty", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="_chosen_verified", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="_rejected_verified_wrong", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="_prompt_matches", value_set=[True]),
    ]


def _step_pairs(gxe) -> list:
    return [
        gxe.ExpectColumnValuesToNotBeNull(column="pair_id"),
        gxe.ExpectColumnValuesToBeUnique(column="pair_id"),
        gxe.ExpectColumnValuesToBeInSet(column="source", value_set=["search", "candidates", "correction"]),
        gxe.ExpectColumnValuesToBeBetween(column="depth", min_value=0),
        gxe.ExpectColumnValuesToBeInSet(column="_chosen_ne_rejected", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="_both_nonempty", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="_chosen_above_rejected", value_set=[True]),
    ]


def _sft(gxe) -> list:
    return [
        gxe.ExpectColumnValuesToNotBeNull(column="sft_id"),
        gxe.ExpectColumnValuesToBeUnique(column="sft_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="chain_id"),
        gxe.ExpectColumnValueLengthsToBeBetween(column="prompt", min_value=1),
        gxe.ExpectColumnValueLengthsToBeBetween(column="completion", min_value=1),
        gxe.ExpectColumnValuesToBeInSet(column="_completion_verified", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="_prompt_matches", value_set=[True]),
    ]


def _metrics(gxe) -> list:
    return [  # value may be NaN (e.g. ops_per_problem when no problem states its operations)
        gxe.ExpectColumnValuesToNotBeNull(column="stage"),
        gxe.ExpectColumnValuesToBeInSet(column="table", value_set=["chains", "pairs", "step_pairs", "sft"]),
        gxe.ExpectColumnValuesToNotBeNull(column="metric"),
        gxe.ExpectColumnValueLengthsToBeBetween(column="metric", min_value=1),
        gxe.ExpectColumnValuesToBeOfType(column="value", type_="float64"),
        gxe.ExpectColumnValuesToNotBeNull(column="n"),
        gxe.ExpectColumnValuesToBeBetween(column="n", min_value=0),
    ]


SUITES: dict[str, Callable[[Any], list]] = {"problems": _problems, "chains": _chains, "pairs": _pairs, "step_pairs": _step_pairs,
                                            "sft": _sft, "metrics": _metrics}
"""Each table's suite: ``great_expectations.expectations`` (the module, imported on first use) -> the
table's expectations. A table with no entry (routes, worklist, models...) is written unchecked: every
row is good, none is quarantined, and its commit records no ``validation`` rows."""


def _suite(table_name: str, gxe) -> list:
    """The expectations of a table's suite (none for tables without one, e.g. routes)."""
    build = SUITES.get(table_name)
    return build(gxe) if build else []


def _step_pair_derived(df: pd.DataFrame) -> pd.DataFrame:
    df = _pair_derived(df)
    df["_chosen_above_rejected"] = [c > r for c, r in zip(df["chosen_score"], df["rejected_score"])]
    return df


DERIVED = {"chains": _chain_derived, "pairs": _pair_derived, "step_pairs": _step_pair_derived}


def validate(table_name: str, table: pa.Table, extra: dict[str, list] | None = None) -> Outcome:
    """Run the table's suite; split rows that fail any expectation from those that pass.

    ``extra`` adds derived columns computed by the caller from context the table lacks
    (e.g. ``_chosen_verified`` for pairs, from the problems' gold answers); a suite
    checks a derived column only when it is present.
    """
    import great_expectations as gx
    import great_expectations.expectations as gxe

    if table.num_rows == 0 or not _suite(table_name, gxe):  # nothing to check (routes have no suite)
        return Outcome(table, [], [])
    df = table.to_pandas(types_mapper=None)
    df = DERIVED.get(table_name, lambda d: d)(df)
    for name, values in (extra or {}).items():
        df[name] = values
    ctx = _context()
    with _VALIDATE_LOCK:  # GX contexts are not thread-safe; a suite run is ~50 ms
        if table_name not in _BATCH_DEFS:
            ds = ctx.data_sources.add_pandas(f"sphere_{table_name}")
            _BATCH_DEFS[table_name] = ds.add_dataframe_asset(table_name).add_batch_definition_whole_dataframe("all")
        batch = _BATCH_DEFS[table_name].get_batch(batch_parameters={"dataframe": df})
        suite = gx.ExpectationSuite(name=f"{table_name}_suite")
        for e in _suite(table_name, gxe):
            if e.column.startswith("_") and e.column not in df.columns:
                continue
            suite.add_expectation(e)
        res = batch.validate(suite, result_format={"result_format": "COMPLETE"})
    failed: dict[int, list[str]] = {}
    results = []
    for r in res.results:
        cfg = r.expectation_config
        col = cfg.kwargs.get("column")
        label = f"{cfg.type}({col})"
        idx = r.result.get("unexpected_index_list") or []
        for i in idx:
            failed.setdefault(int(i if not isinstance(i, dict) else next(iter(i.values()))), []).append(label)
        results.append(
            {
                "expectation": cfg.type,
                "column": col,
                "success": bool(r.success),
                "element_count": int(r.result.get("element_count", len(df)) or 0),
                "unexpected_count": int(r.result.get("unexpected_count", 0) or 0),
            }
        )
    positions = sorted(failed)
    keep = [i for i in range(table.num_rows) if i not in failed]
    bad_rows = [{"row": table.slice(i, 1).to_pylist()[0], "check": failed[i][0], "reason": "; ".join(failed[i])} for i in positions]
    return Outcome(table.take(pa.array(keep, type=pa.int64())), bad_rows, results, positions)
