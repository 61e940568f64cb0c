"""Held-out evaluation of a policy: greedy accuracy (and maj@k / pass@k), with 95% CIs.

``held_out(section, seeds, training) -> (problems, overlap)``: the evaluation problems (the
run's own seeds section with another generator seed, or ``section.problems``), with every
problem whose question is also a training question removed and counted; none left is an
error (``NoHeldOutProblems``). The stage's fingerprint covers a held-out file's content.
``evaluate_policy(problems, generate, section, ...) -> (evals rows, per-problem rows)``
(every evals row carries that count as ``overlap_removed``):
one greedy completion per problem (the whole solution, temperature 0), plus ``k`` samples
at ``section.temperature`` when ``k > 1`` for maj@k (the most frequent answer is right)
and pass@k (any answer is right). Answers are checked against gold like every chain.
Intervals are Wilson score intervals; ``mcnemar`` compares two models on the same problems.
"""

from __future__ import annotations

import math
from collections import Counter
from functools import partial

import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.backends.base import GenRequest
from infra.config import BuiltinSeeds, EvaluateConfig, FileSeeds, RunConfig, SeedsConfig
from infra.cost import Cost
from infra.prompts import load_template
from infra.schemas import from_rows, require
from tasks.answers import extract_answer, is_equivalent
from tasks.common import RunContext, is_transient
from tasks.search import Generate
from tasks.seeds import load_seeds, source_hash
from tasks.train import trained_backend

STAGE = "evaluate"
Z95 = 1.959963984540054


class NoHeldOutProblems(ValueError):
    """No usable held-out problem is left to evaluate on (all quarantined, none given, or all
    training questions)."""


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default); (0, 1) when n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (0.0 if successes == 0 else max(0.0, centre - half)), (1.0 if successes == n else min(1.0, centre + half))


def mcnemar(a: dict[str, bool], b: dict[str, bool]) -> dict[str, float]:
    """Exact McNemar test of two models' per-problem correctness on their common problems:
    ``b_only`` (b right, a wrong), ``a_only``, ``n`` common problems and the two-sided p value
    of the binomial test on the discordant pairs."""
    common = sorted(set(a) & set(b))
    b_only = sum(1 for p in common if b[p] and not a[p])
    a_only = sum(1 for p in common if a[p] and not b[p])
    m = a_only + b_only
    if m == 0:
        return {"n": len(common), "a_only": 0, "b_only": 0, "p_value": 1.0}
    tail = sum(math.comb(m, i) for i in range(min(a_only, b_only) + 1)) / 2**m
    return {"n": len(common), "a_only": a_only, "b_only": b_only, "p_value": min(1.0, 2 * tail)}


def held_out_seeds(section: EvaluateConfig, seeds: SeedsConfig) -> SeedsConfig:
    """The evaluation problems' source: ``section.problems``, or the run's built-in seeds with
    ``section.seed`` and ``section.n`` (same difficulty, other problems)."""
    if section.problems is not None:
        return section.problems
    if isinstance(seeds, BuiltinSeeds):
        return seeds.model_copy(update={"seed": section.seed, "n": section.n})
    raise ValueError("evaluate.problems must be set when the run's seeds are a file (there is no generator to draw "
                     "held-out problems from)")


def held_out(section: EvaluateConfig, seeds: SeedsConfig, training_questions: set[str], *, run_id: str) -> tuple[pa.Table, int]:
    """(held-out problems, how many were dropped because their question is a training question).
    ``NoHeldOutProblems`` naming the source and the counts (rows quarantined, overlapping) when
    none is left: an evaluation on nothing is not an accuracy."""
    source = held_out_seeds(section, seeds)
    problems, quarantined = load_seeds(source, run_id)
    if isinstance(source, FileSeeds) and section.n:
        problems = problems.slice(0, section.n)
    keep = [q.strip() not in training_questions for q in problems.column("question").to_pylist()]
    if not any(keep):
        raise NoHeldOutProblems(f"no held-out problem to evaluate in {source_name(source)}: {problems.num_rows} valid, "
                                f"{quarantined.num_rows} rows quarantined, {keep.count(False)} overlapping a training question")
    return problems.filter(pa.array(keep, pa.bool_())), keep.count(False)


def _answers(generate: Generate, prompts: list[str], n: int, temperature: float, max_tokens: int, seed: int) -> list[list[str | None]]:
    requests = [GenRequest(prompt=p, n=n, temperature=temperature, max_tokens=max_tokens, seed=seed + i) for i, p in enumerate(prompts)]
    return [[extract_answer(c.text) for c in res.completions] for res in generate(requests)] if requests else []


def evaluate_policy(problems: pa.Table, generate: Generate, section: EvaluateConfig, prompt_template: str, *,
                    run_id: str, round: int, model: str, dataset: str, seed: int = 0,
                    overlap_removed: int = 0) -> tuple[list[dict], list[dict]]:
    """(``evals`` rows, ``eval_items`` rows) of one model on ``problems`` (see the module docstring);
    ``overlap_removed``: how many held-out problems were dropped before (``held_out``), on every row."""
    require(problems, "problems", ["problem_id", "question", "gold_answer"])
    solve = load_template(prompt_template)
    rows = problems.select(["problem_id", "question", "gold_answer"]).to_pylist()
    prompts = [solve.render(question=r["question"]) for r in rows]
    greedy = _answers(generate, prompts, 1, 0.0, section.max_tokens, seed)
    right = {"greedy": [is_equivalent(a[0], r["gold_answer"]) for a, r in zip(greedy, rows)]}
    if section.k > 1:
        samples = _answers(generate, prompts, section.k, section.temperature, section.max_tokens, seed + 1_000_003)
        right[f"pass@{section.k}"] = [any(is_equivalent(a, r["gold_answer"]) for a in s) for s, r in zip(samples, rows)]
        right[f"maj@{section.k}"] = [_majority_right(s, r["gold_answer"]) for s, r in zip(samples, rows)]
    evals = []
    for metric, flags in right.items():
        lo, hi = wilson(sum(flags), len(flags))
        evals.append({"run_id": run_id, "round": round, "model": model, "dataset": dataset, "metric": metric,
                      "value": sum(flags) / len(flags) if flags else 0.0, "ci_low": lo, "ci_high": hi, "n": len(flags),
                      "overlap_removed": overlap_removed})
    items = [{"run_id": run_id, "round": round, "model": model, "dataset": dataset, "problem_id": r["problem_id"],
              "answer": a[0], "correct": ok} for r, a, ok in zip(rows, greedy, right["greedy"])]
    return evals, items


def _majority_right(answers: list[str | None], gold: str) -> bool:
    votes = Counter(a.strip() for a in answers if a)
    return bool(votes) and is_equivalent(votes.most_common(1)[0][0], gold)


def source_name(src: SeedsConfig) -> str:
    return f"builtin:seed={src.seed}:n={src.n}" if isinstance(src, BuiltinSeeds) else "file:" + ",".join(src.paths)


OOD = "ood:"  # prefix of an out-of-distribution held-out set's dataset name
REFERENCE_ROUND = -1  # the round of a reference model's evals rows (evaluate.reference)


def dataset_name(section: EvaluateConfig, seeds: SeedsConfig) -> str:
    return source_name(held_out_seeds(section, seeds))


def is_ood(dataset: str) -> bool:
    """Whether an evals/eval_items row's dataset is the out-of-distribution held-out set."""
    return dataset.startswith(OOD)


def held_out_sets(section: EvaluateConfig, seeds: SeedsConfig, training_questions: set[str], *,
                  run_id: str) -> list[tuple[str, pa.Table, int]]:
    """``[(dataset name, problems, overlap removed)]``: the in-distribution held-out set, then
    (``section.ood``) the out-of-distribution one, named ``ood:<source>``."""
    out = [(dataset_name(section, seeds), *held_out(section, seeds, training_questions, run_id=run_id))]
    if section.ood is not None:
        ood = section.model_copy(update={"problems": section.ood, "n": section.ood.n})
        out.append((OOD + source_name(section.ood), *held_out(ood, seeds, training_questions, run_id=run_id)))
    return out


@task(name=STAGE, task_run_name=STAGE + "-{shard}", cache_policy=NO_CACHE, retry_delay_seconds=2, retry_condition_fn=is_transient)
def evaluate_task(run_dir: str, shard: str, config_hash: str) -> str:
    """Evaluate the checkpoint the round trained (and, in round 0, the policy it started from
    and ``evaluate.reference`` as round -1) on the held-out problems, in-distribution and
    (``evaluate.ood``) out-of-distribution -> ``evals`` and ``eval_items``. The policy's pool is the run's
    (the one generation used, if still alive); each model's pool is closed after its
    evaluation (this is the last stage that needs it, and the next model needs the room)."""
    from infra.pool import close_pool, get_pool

    ctx = RunContext.open(run_dir)
    cfg: RunConfig = ctx.cfg
    store = ctx.store
    fp = {**ctx.fingerprint(__name__, config_hash, [("problems", "seeds"), ("models", "train")]),
          "held_out": source_hash(held_out_seeds(cfg.evaluate, cfg.seeds))}  # a held-out file's content, not only its path
    if not ctx.is_done(STAGE, shard, fp):
        training = {q.strip() for q in store.read_table("problems", "seeds").column("question").to_pylist()}
        sets = held_out_sets(cfg.evaluate, cfg.seeds, training, run_id=ctx.run_id)
        models = [(cfg.round, cfg.policy)] if cfg.round == 0 else []
        models += [(cfg.round + 1, trained_backend(cfg.policy, m["path"])) for m in store.read_table("models", "train").to_pylist()]
        if cfg.round == 0 and cfg.evaluate.reference is not None:
            models.append((REFERENCE_ROUND, cfg.evaluate.reference))
        evals, items, cost = [], [], Cost()
        for rnd, backend in models:
            pool = get_pool(backend, cfg.pool, run_dir)
            for dataset, problems, overlap in sets:
                e, i = evaluate_policy(problems, partial(pool.generate, cost=cost), cfg.evaluate, cfg.generation.prompt_template,
                                       run_id=ctx.run_id, round=rnd, model=pool.model_name, dataset=dataset, seed=cfg.seed,
                                       overlap_removed=overlap)
                evals += e
                items += i
            close_pool(backend, cfg.pool, run_dir)
        ctx.commit(STAGE, shard, {"evals": from_rows(evals, "evals"), "eval_items": from_rows(items, "eval_items")}, fp, cost=cost)
    return str(store.part_path("evals", STAGE, shard))
