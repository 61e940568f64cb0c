"""Arrow schemas of every table, declared once. Stages check their inputs against these."""

from __future__ import annotations

import hashlib

import pyarrow as pa

PROBLEMS = pa.schema(
    [
        ("run_id", pa.string()),
        ("problem_id", pa.string()),
        ("source", pa.string()),
        ("source_id", pa.string()),
        ("question", pa.string()),
        ("gold_answer", pa.string()),
        ("reference_solution", pa.string()),
        ("n_ops", pa.int32()),
    ]
)

CHAINS = pa.schema(
    [
        ("run_id", pa.string()),
        ("chain_id", pa.string()),
        ("problem_id", pa.string()),
        ("stage", pa.string()),
        ("branch", pa.string()),
        ("model", pa.string()),
        ("scorer", pa.string()),
        ("reward_mode", pa.string()),
        ("template_hash", pa.string()),
        ("config_hash", pa.string()),
        ("temperature", pa.float64()),
        ("top_p", pa.float64()),
        ("candidates", pa.int32()),
        ("seed", pa.int64()),
        ("prompt", pa.string()),
        ("steps", pa.list_(pa.string())),
        ("step_scores", pa.list_(pa.float64())),
        ("step_rewards", pa.list_(pa.float64())),
        ("n_steps", pa.int32()),
        ("text", pa.string()),
        ("final_answer", pa.string()),
        ("gold_answer", pa.string()),
        ("correct", pa.bool_()),
        ("verdict", pa.string()),
        ("finish", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("sampled_tokens", pa.int64()),
        ("parent_chain_id", pa.string()),
        ("error", pa.string()),
        ("step_candidates", pa.list_(pa.list_(pa.string()))),  # per step: the candidates scored at its node ([] if none)
        ("candidate_scores", pa.list_(pa.list_(pa.float64()))),  # their scores (unknown_score where not judgeable)
    ]
)

PAIRS = pa.schema(
    [
        ("run_id", pa.string()),
        ("pair_id", pa.string()),
        ("problem_id", pa.string()),
        ("stage", pa.string()),
        ("route", pa.string()),
        ("prompt", pa.string()),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("chosen_chain_id", pa.string()),
        ("rejected_chain_id", pa.string()),
        ("chosen_score", pa.float64()),
        ("rejected_score", pa.float64()),
        ("margin", pa.float64()),
    ]
)

STEP_PAIRS = pa.schema(
    [
        ("run_id", pa.string()),
        ("pair_id", pa.string()),
        ("problem_id", pa.string()),
        ("stage", pa.string()),  # the stage whose chains hold the two steps
        ("source", pa.string()),  # search | candidates | correction
        ("prompt", pa.string()),  # the solve prompt followed by the shared prefix steps
        ("depth", pa.int32()),  # index of the two steps (= number of prefix steps)
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("chosen_score", pa.float64()),
        ("rejected_score", pa.float64()),
        ("chosen_chain_id", pa.string()),
        ("rejected_chain_id", pa.string()),
    ]
)
"""Step-level pairs: the same prompt and prefix, one step judged right, one judged wrong."""

SFT = pa.schema(
    [
        ("run_id", pa.string()),
        ("sft_id", pa.string()),
        ("problem_id", pa.string()),
        ("stage", pa.string()),
        ("prompt", pa.string()),
        ("completion", pa.string()),
        ("chain_id", pa.string()),
    ]
)

METRICS = pa.schema(
    [
        ("run_id", pa.string()),
        ("stage", pa.string()),
        ("table", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("n", pa.int64()),
    ]
)

FRONTIER = pa.schema(
    [
        ("run_id", pa.string()),
        ("problem_id", pa.string()),
        ("samples", pa.int32()),  # whole solutions sampled from the policy at the search temperature
        ("solved", pa.int32()),  # of them, how many reached the gold answer
        ("solve_rate", pa.float64()),
        ("kept", pa.bool_()),  # 0 < solve_rate < 1: searched; otherwise routed off_frontier
    ]
)
"""The policy's frontier (evolve.frontier): one row per problem of a generation shard; empty when off."""

ROUTES = pa.schema(
    [
        ("run_id", pa.string()),
        ("problem_id", pa.string()),
        ("max_correct", pa.bool_()),
        ("min_correct", pa.bool_()),
        ("route", pa.string()),
    ]
)

QUARANTINE = pa.schema(
    [
        ("run_id", pa.string()),
        ("stage", pa.string()),
        ("table", pa.string()),
        ("source", pa.string()),
        ("check", pa.string()),
        ("reason", pa.string()),
        ("row", pa.string()),
    ]
)

VALIDATION = pa.schema(
    [
        ("run_id", pa.string()),
        ("stage", pa.string()),
        ("table", pa.string()),
        ("shard", pa.string()),
        ("expectation", pa.string()),
        ("column", pa.string()),
        ("success", pa.bool_()),
        ("element_count", pa.int64()),
        ("unexpected_count", pa.int64()),
    ]
)

WORKLIST = pa.schema(
    [
        ("run_id", pa.string()),
        ("problem_id", pa.string()),
        ("question", pa.string()),
        ("gold_answer", pa.string()),
        ("chain_id", pa.string()),
        ("steps", pa.list_(pa.string())),
        ("text", pa.string()),
        ("step_scores", pa.list_(pa.float64())),
        ("target", pa.string()),  # the stage it feeds: self_correction | diversity
    ]
)
"""Routing's hand-off to self-correction and diversity: each routed problem with its MAX chain,
one part per generation shard; a consumer shard ``<shard>-<k>`` is the k-th slice of its target's rows."""

MODELS = pa.schema(
    [
        ("run_id", pa.string()),  # the round's data run that trained it
        ("evolve_id", pa.string()),
        ("model_id", pa.string()),
        ("round", pa.int32()),  # the round whose data trained it (the model serves round + 1)
        ("path", pa.string()),  # the Hugging Face checkpoint directory
        ("parent_model", pa.string()),  # the policy it started from (and the DPO reference)
        ("trainer", pa.string()),
        ("method", pa.string()),
        ("train_config_hash", pa.string()),
        ("pairs", pa.int64()),
        ("sft_rows", pa.int64()),
        ("steps", pa.int64()),
        ("seconds", pa.float64()),
    ]
)
"""Every checkpoint the factory trained, with its lineage; its held-out results are in ``evals``."""

TRAIN_LOG = pa.schema(
    [
        ("run_id", pa.string()),
        ("model_id", pa.string()),
        ("split", pa.string()),  # "train" (per step) or "val" (per epoch, held-out pairs)
        ("step", pa.int64()),
        ("epoch", pa.int32()),
        ("loss", pa.float64()),
        ("reward_accuracy", pa.float64()),
        ("margin", pa.float64()),
        ("chosen_logp", pa.float64()),
        ("rejected_logp", pa.float64()),
    ]
)

EVALS = pa.schema(
    [
        ("run_id", pa.string()),
        ("round", pa.int32()),  # the round the model serves (0 = the starting policy)
        ("model", pa.string()),
        ("dataset", pa.string()),
        ("metric", pa.string()),  # greedy | maj@k | pass@k
        ("value", pa.float64()),
        ("ci_low", pa.float64()),
        ("ci_high", pa.float64()),
        ("n", pa.int64()),
        ("overlap_removed", pa.int64()),  # held-out problems dropped because their question is a training question
    ]
)
"""Held-out results, one row per model and metric; ``n`` problems were evaluated after
``overlap_removed`` were dropped for overlapping the run's training problems."""

EVAL_ITEMS = pa.schema(
    [
        ("run_id", pa.string()),
        ("round", pa.int32()),
        ("model", pa.string()),
        ("dataset", pa.string()),
        ("problem_id", pa.string()),
        ("answer", pa.string()),
        ("correct", pa.bool_()),
    ]
)
"""Per-problem greedy results (for paired tests between rounds)."""

SCHEMAS = {
    "problems": PROBLEMS,
    "chains": CHAINS,
    "pairs": PAIRS,
    "step_pairs": STEP_PAIRS,
    "frontier": FRONTIER,
    "sft": SFT,
    "metrics": METRICS,
    "routes": ROUTES,
    "quarantine": QUARANTINE,
    "validation": VALIDATION,
    "worklist": WORKLIST,
    "models": MODELS,
    "train_log": TRAIN_LOG,
    "evals": EVALS,
    "eval_items": EVAL_ITEMS,
}


class SchemaError(ValueError):
    """A table handed to a stage lacks columns, or has them with the wrong types."""


def require(table: pa.Table, name: str, columns: list[str] | None = None) -> None:
    """Raise SchemaError unless ``table`` has ``columns`` (default: all) of schema ``name``,
    with the declared types. Every stage checks its inputs with this."""
    schema = SCHEMAS[name]
    for col in columns or schema.names:
        if col not in table.column_names:
            raise SchemaError(f"{name}: missing column {col!r} (have {table.column_names})")
        want = schema.field(col).type
        if table.schema.field(col).type != want and table.num_rows:
            raise SchemaError(f"{name}.{col}: type {table.schema.field(col).type}, expected {want}")


def from_rows(rows: list[dict], name: str) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SCHEMAS[name])


def stable_id(*parts: object) -> str:
    """A content hash id: the same parts give the same id on every run and machine."""
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:20]
