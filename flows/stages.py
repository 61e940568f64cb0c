"""Every stage of the factory, declared once.

A ``Stage`` is a plain value: its name (the one name it has everywhere: subflow, task,
``<table>/<stage>/`` folders, ``sphere rerun --stage``), its pure function ``fn`` (run by
``tasks.runner`` over the declared ``inputs``) or, for the stages that are genuinely
different (seeds, metrics, train, evaluate), its own Prefect task
(``task(run_dir, shard, config_hash) -> path``), the tables it reads and writes, the config
values its output depends on (dotted paths; their hash, with the settings its commit
applies to the tables it writes, is part of every shard's fingerprint, and they are the only
config its function is handed: ``Stage.config_paths``), the stages it runs after, how to
list its shards, the backends it runs on (model stages: every engine its shards use, a PRM
scorer's reward pool included, so the run builds, fits and frees them all) and whether a
config enables it.

The run order, the downstream sets, the CLI's ``--stage`` choices, the rerun's superseded
outputs and the fingerprints are derived from ``STAGES``. ``check_stages`` refuses, before
any work, a set of stages in which an enabled stage reads a table that no earlier enabled
stage writes. Adding a stage: the README's "Adding a stage".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from infra.config import RunConfig
from infra.storage import RunStore
from tasks.common import commit_config
from tasks.diversity import diversity_stage
from tasks.evaluate import evaluate_task
from tasks.generation import generation_stage
from tasks.metrics import metrics_task
from tasks.routing import consumers, routing_stage
from tasks.runner import Read, stage_task
from tasks.scorers import prm_backends
from tasks.seeds import manifest_shards, seeds_task
from tasks.self_correction import self_correction_stage
from tasks.sft import sft_stage
from tasks.step_pairs import step_pairs_stage
from tasks.train import train_task

IMPLICIT_WRITES = ("quarantine", "validation")  # every stage's commit writes its rejected rows and suite results


class StageGraphError(ValueError):
    """The declared stages do not form a runnable graph (unknown or circular ``after``, or a
    stage that reads a table no earlier stage writes)."""


def one_shard(run_dir: str) -> list[str]:
    return ["00000"]


def same_shard(run_dir: str, upstream_shard: str) -> list[str]:
    """A streamed stage whose shard ``s`` follows the upstream stage's shard ``s``."""
    return [upstream_shard]


def consumers_of(stage: str) -> Callable[[str, str], list[str]]:
    """The shards of ``stage`` that routing's committed shard feeds (its marker's ``consumers``)."""

    def shards(run_dir: str, routing_shard: str) -> list[str]:
        marker = RunStore.at(run_dir).stage_marker("routing", routing_shard)
        return (marker or {}).get("consumers", {}).get(stage, [])

    return shards


def worklist_shards(stage: str) -> Callable[[str], list[str]]:
    """Every shard of ``stage``, from the committed routing shards (one per generation shard)."""
    of = consumers_of(stage)

    def shards(run_dir: str) -> list[str]:
        return [s for u in manifest_shards(run_dir) for s in of(run_dir, u)]

    return shards


def searching(policy: Callable[[RunConfig], Any]) -> Callable[[RunConfig], tuple]:
    """A search stage's backends: its policy, and its scorer's reward pool when the scorer is a PRM on one."""
    return lambda cfg: (policy(cfg), *prm_backends(cfg.scorer))


def always(cfg: RunConfig) -> bool:
    return True


@dataclass(frozen=True)
class Stage:
    name: str
    task: Any  # a Prefect task (run_dir, shard, config_hash) -> str; None: the runner's task over ``fn``
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    config: tuple[str, ...]  # dotted config paths the stage's output depends on
    after: tuple[str, ...] = ()
    shards: Callable[[str], list[str]] = one_shard  # run_dir -> shard ids, read when the stage starts
    backends: Callable[[RunConfig], tuple] | None = None  # model stages: every backend config their shards use
    enabled: Callable[[RunConfig], bool] = always
    exclusive: Callable[[RunConfig], bool] = lambda cfg: False  # needs the machine's GPUs: every engine pool is freed first
    stream_from: str | None = None  # streamed: its shards can start as each shard of this stage commits...
    shards_of: Callable[[str, str], list[str]] | None = None  # ...(run_dir, upstream shard) -> the shards it feeds
    optional_reads: tuple[str, ...] = ()  # read when an earlier enabled stage writes them (evaluate: train's models)
    fn: Callable | None = None  # the pure stage function (inputs, config view, engines) -> {table: rows} (tasks.runner)
    inputs: tuple[Read, ...] = ()  # what the runner reads for it (tables among ``reads``)
    checked_against: str | None = None  # the input whose problems the commit's row checks use
    record: Callable | None = None  # (outputs, shard, config view) -> what its commit records beside the tables

    @property
    def shard_task(self) -> Any:
        """The Prefect task computing one shard: the declared ``task``, else the runner's over ``fn``."""
        return self.task if self.task is not None else stage_task(self)

    @property
    def module(self) -> str:
        """The module of the stage's code (its function's or task's): its code version's root."""
        return (self.fn or self.task.fn).__module__

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.writes + IMPLICIT_WRITES

    @property
    def config_paths(self) -> tuple[str, ...]:
        """Every config path the stage's shards are computed under (and the only ones its function
        is handed, ``tasks.runner.ConfigView``): its declared ``config`` plus the settings
        committing its ``writes`` applies (``commit_config``: the validation gate, and for
        pairs/SFT process verification and the solve prompt)."""
        extra = commit_config(self.writes)
        return self.config + tuple(p for p in extra if p not in self.config)

    def backends_of(self, cfg: RunConfig) -> tuple:
        """The backend configs its shards use under ``cfg`` (none for a CPU stage)."""
        return tuple(self.backends(cfg)) if self.backends else ()

    def config_hash(self, cfg: RunConfig) -> str:
        """Hash of the values at ``config_paths``: changing any of them, and nothing else, changes it."""
        return cfg.stage_hash(*self.config_paths)


STAGES: tuple[Stage, ...] = (
    Stage("seeds", seeds_task, reads=(), writes=("problems",),
          config=("seeds", "generation.shard_size")),
    Stage("generation", None, fn=generation_stage, inputs=(Read("problems", "seeds"),), checked_against="problems",
          reads=("problems",), writes=("chains", "frontier"),
          config=("seed", "policy", "search", "scorer", "generation.prompt_template", "evolve.frontier", "evolve.frontier_samples",
                  "evaluate.max_tokens"),
          after=("seeds",), shards=manifest_shards, backends=searching(lambda cfg: cfg.policy)),
    Stage("routing", None, fn=routing_stage, inputs=(Read("problems", "seeds"), Read("chains", "generation"),
                                                     Read("frontier", "generation")),
          checked_against="problems", record=consumers, reads=("problems", "chains", "frontier"), writes=("routes", "pairs", "worklist"),
          config=("generation.mixed_outcome", "self_correction.shard_size", "diversity.shard_size"),
          after=("generation",), shards=manifest_shards, stream_from="generation", shards_of=same_shard),
    Stage("self_correction", None, fn=self_correction_stage, inputs=(Read("worklist", "routing", "worklist"),),
          checked_against="worklist", reads=("worklist",), writes=("chains", "pairs"),
          config=("seed", "policy", "search", "scorer", "self_correction.policy", "self_correction.prompt_template",
                  "self_correction.shard_size", "generation.prompt_template"),
          after=("routing",), shards=worklist_shards("self_correction"),
          backends=searching(lambda cfg: cfg.self_correction.policy or cfg.policy), enabled=lambda cfg: cfg.self_correction.enabled,
          stream_from="routing", shards_of=consumers_of("self_correction")),
    Stage("diversity", None, fn=diversity_stage, inputs=(Read("worklist", "routing", "worklist"),),
          checked_against="worklist", reads=("worklist",), writes=("chains", "pairs"),
          config=("seed", "search", "scorer", "diversity.small_policy", "diversity.candidates", "diversity.shard_size",
                  "generation.prompt_template"),
          after=("routing",), shards=worklist_shards("diversity"),
          backends=searching(lambda cfg: cfg.diversity.small_policy), enabled=lambda cfg: cfg.diversity.enabled,
          stream_from="routing", shards_of=consumers_of("diversity")),
    Stage("sft", None, fn=sft_stage, inputs=(Read("problems", "seeds", "table"), Read("chains", None, "table")),
          checked_against="problems", reads=("problems", "chains"), writes=("sft",),
          config=("dedup", "generation.prompt_template"), after=("self_correction", "diversity")),
    Stage("step_pairs", None, fn=step_pairs_stage, inputs=(Read("chains", None, "table"),), reads=("chains",),
          writes=("step_pairs",), config=("step_pairs", "search.step_separator"), after=("self_correction", "diversity"),
          enabled=lambda cfg: cfg.step_pairs.enabled),
    Stage("metrics", metrics_task, reads=("problems", "chains", "pairs", "sft", "quarantine"), optional_reads=("step_pairs",),
          writes=("metrics",), config=("metrics", "dedup"), after=("sft", "step_pairs"), enabled=lambda cfg: cfg.metrics.enabled),
    Stage("train", train_task, reads=("pairs", "sft"), optional_reads=("step_pairs",), writes=("train_log", "models"),
          config=("train", "policy", "round", "evolve_id", "search.step_separator"), after=("sft", "step_pairs"), enabled=lambda cfg: cfg.train.enabled,
          exclusive=lambda cfg: cfg.train.num_gpus > 0),
    Stage("evaluate", evaluate_task, reads=("problems",), optional_reads=("models",), writes=("evals", "eval_items"),
          config=("evaluate", "policy", "seeds", "round", "seed", "generation.prompt_template"),
          after=("train",), backends=lambda cfg: (cfg.policy,), enabled=lambda cfg: cfg.evaluate.enabled),
)


def ordered(stages: tuple[Stage, ...] | None = None) -> tuple[Stage, ...]:
    """The stages in run order: each after everything it names in ``after`` (ties keep the
    declaration order). StageGraphError on an unknown name or a cycle."""
    stages = STAGES if stages is None else stages
    by = {s.name: s for s in stages}
    if len(by) != len(stages):
        raise StageGraphError(f"stage names must be unique: {[s.name for s in stages]}")
    for s in stages:
        unknown = [a for a in s.after if a not in by]
        if unknown:
            raise StageGraphError(f"stage {s.name!r} runs after unknown stage(s) {unknown}")
        if (s.task is None) == (s.fn is None):
            raise StageGraphError(f"stage {s.name!r} must declare either a task or a function (fn), not {'both' if s.fn else 'neither'}")
        undeclared = [r.table for r in s.inputs if r.table not in s.reads + s.optional_reads]
        if undeclared:
            raise StageGraphError(f"stage {s.name!r} has inputs {undeclared} that its reads do not declare")
        if s.stream_from and (s.stream_from not in s.after or s.shards_of is None):
            raise StageGraphError(f"stage {s.name!r} streams from {s.stream_from!r}: it must also run after it and declare shards_of")
    out: list[Stage] = []
    placed: set[str] = set()
    while len(out) < len(stages):
        ready = [s for s in stages if s.name not in placed and set(s.after) <= placed]
        if not ready:
            raise StageGraphError(f"stages {sorted(set(by) - placed)} run after each other in a circle")
        out.append(ready[0])
        placed.add(ready[0].name)
    return tuple(out)


def stream_groups(run: tuple[Stage, ...]) -> list[list[Stage]]:
    """The run's stages (in run order) cut into groups that stream: a stage joins the group
    of the stage it streams from (``stream_from``); any other stage starts a new group. With
    the declared stages: [seeds], [generation, routing, self_correction, diversity], [sft], ..."""
    groups: list[list[Stage]] = []
    for st in run:
        if st.stream_from and groups and st.stream_from in {s.name for s in groups[-1]}:
            groups[-1].append(st)
        else:
            groups.append([st])
    return groups


def followers(group: list[Stage]) -> dict[str, list[Stage]]:
    """In a group of stages that stream (``stream_groups``): per stage, the stages that stream from it."""
    out: dict[str, list[Stage]] = {}
    for st in group[1:]:
        if st.stream_from not in {s.name for s in group}:
            raise StageGraphError(f"stage {st.name!r} streams from {st.stream_from!r}, which is not in {[s.name for s in group]}")
        out.setdefault(st.stream_from, []).append(st)
    return out


def names(stages: tuple[Stage, ...] | None = None) -> tuple[str, ...]:
    stages = STAGES if stages is None else stages
    return tuple(s.name for s in ordered(stages))


def get(name: str, stages: tuple[Stage, ...] | None = None) -> Stage:
    stages = STAGES if stages is None else stages
    for s in stages:
        if s.name == name:
            return s
    raise StageGraphError(f"unknown stage {name!r}; stages: {', '.join(names(stages))}")


def downstream(name: str, stages: tuple[Stage, ...] | None = None) -> tuple[str, ...]:
    """Every stage that runs after ``name``, directly or through others, in run order."""
    stages = STAGES if stages is None else stages
    found = {name}
    for s in ordered(stages):
        if found & set(s.after):
            found.add(s.name)
    return tuple(s.name for s in ordered(stages) if s.name in found and s.name != name)


def enabled(cfg: RunConfig, stages: tuple[Stage, ...] | None = None) -> tuple[Stage, ...]:
    stages = STAGES if stages is None else stages
    return tuple(s for s in ordered(stages) if s.enabled(cfg))


def check_stages(cfg: RunConfig, stages: tuple[Stage, ...] | None = None) -> tuple[Stage, ...]:
    """The enabled stages in run order, after checking that each reads only tables an earlier
    enabled stage writes, and that no table it reads when present (``optional_reads``) is
    written only by a later enabled stage (StageGraphError naming the stage and the table otherwise)."""
    stages = STAGES if stages is None else stages
    written: set[str] = set()
    run = enabled(cfg, stages)
    for s in run:
        missing = [t for t in s.reads if t not in written]
        if missing:
            raise StageGraphError(f"stage {s.name!r} reads {missing}, which no earlier enabled stage writes "
                                  f"(stages in order: {', '.join(x.name for x in run)})")
        late = [t for t in s.optional_reads if t not in written and any(t in x.outputs for x in run[run.index(s) + 1:])]
        if late:
            raise StageGraphError(f"stage {s.name!r} reads {late}, which an enabled stage writes only after it "
                                  f"(stages in order: {', '.join(x.name for x in run)})")
        written.update(s.outputs)
    return run


def tables(stages: tuple[Stage, ...] | None = None) -> tuple[str, ...]:
    """Every table the stages write (all declared stages by default; a given tuple is taken
    in its own order, e.g. ``check_stages``' enabled stages), in order of first write."""
    out: list[str] = []
    for s in ordered() if stages is None else stages:
        out += [t for t in s.outputs if t not in out]
    return tuple(out)
