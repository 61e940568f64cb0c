"""What a stage's shard fingerprint covers: the config it is handed (and the settings its
commit applies), and the code it can reach — nothing more, nothing less."""

from __future__ import annotations

import shutil
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from flows.stages import STAGES
from infra.config import BACKEND_KINDS, TAG_CHOICES, RunConfig, apply_overrides
from tasks.code_version import code_version, reached
from tests.conftest import ROOT


def _leaves(model: BaseModel, prefix: str = ""):
    """(dotted path, value) of every leaf of a config instance (set sub-models walked; an
    unset optional section is one leaf)."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _leaves(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


BASE = RunConfig()
BASE_RAW = BASE.model_dump(mode="json")
LEAVES = dict(_leaves(BASE))


def _annotation(path: str):
    *parents, name = path.split(".")
    obj = BASE
    for p in parents:
        obj = getattr(obj, p)
    return type(obj).model_fields[name].annotation


def _variants(path: str, value):
    """Candidate other values of a leaf (the first one the config accepts is used)."""
    if path in TAGGED:
        return [k for k in TAGGED[path] if k != value]
    ann = _annotation(path)
    if typing.get_origin(ann) is typing.Literal:
        return [a for a in typing.get_args(ann) if a != value]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value - 1]
    if isinstance(value, float):
        return [value / 2, value + 0.5, value + 1]
    if isinstance(value, str):
        return [value + "-changed"]
    if isinstance(value, list):
        return [value[:-1], value + value] if value else [["changed"]]
    if isinstance(value, dict):
        return [{**value, "changed": 1}]
    return [8, 0.5, "changed", {"kind": "tiny"}, {"kind": "builtin"}, {"kind": "builtin", "min_steps": 12, "max_steps": 12},
            {"kind": "vllm", "model": "m"}, {"x": 1.0}]  # unset optional


TAGGED = {"seeds.kind": TAG_CHOICES["seeds"], "policy.kind": BACKEND_KINDS, "diversity.small_policy.kind": BACKEND_KINDS}
REQUIRED = {"file": {"paths": ["seeds.jsonl"]}, "openai": {"model": "m"}, "vllm": {"model": "m"}}  # a kind's required fields
COMPANIONS = {"train.num_gpus": {"train.kind": "trl"}}  # cannot change alone: set with a sibling of its section


def _changed(path: str) -> RunConfig | None:
    for v in _variants(path, LEAVES[path]):
        # a tagged section's kind takes the section with it (the old kind's fields do not fit the new one)
        change = {path.rpartition(".")[0]: {"kind": v, **REQUIRED.get(v, {})}} if path in TAGGED else {path: v}
        try:
            cfg = RunConfig.model_validate(apply_overrides(BASE_RAW, {**change, **COMPANIONS.get(path, {})}))
        except ValidationError:
            continue
        if cfg.get(path) != BASE.get(path):
            return cfg
    return None


def _covers(paths: tuple[str, ...], leaf: str) -> bool:
    return any(leaf == p or leaf.startswith(p + ".") or p.startswith(leaf + ".") for p in paths)


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_changing_a_config_leaf_changes_the_fingerprint_of_exactly_the_stages_handed_it(leaf):
    cfg = _changed(leaf)
    assert cfg is not None, f"no valid other value found for {leaf}"
    changed = {st.name for st in STAGES if st.config_hash(cfg) != st.config_hash(BASE)}
    assert changed == {st.name for st in STAGES if _covers(st.config_paths, leaf)}, leaf


# The settings every commit applies, found by reading each stage's task code; a stage that is
# handed one of them must recompute when it changes, and no other stage may.
COMMIT_READS = {
    "validation.max_failure_share": {"seeds", "generation", "routing", "self_correction", "diversity", "sft", "step_pairs",
                                     "metrics", "train", "evaluate"},
    "validation.max_wrong_steps": {"routing", "self_correction", "diversity", "sft"},  # pairs and SFT rows are process-checked
    "search.step_separator": {"generation", "routing", "self_correction", "diversity", "sft", "step_pairs", "train"},  # search, process checks, step prompts, step pairs trained
    "generation.prompt_template": {"generation", "routing", "self_correction", "diversity", "sft", "evaluate"},
    "evolve_id": {"train"},  # written into the models row
}


@pytest.mark.parametrize("leaf", sorted(COMMIT_READS))
def test_the_settings_a_commit_reads_are_in_the_fingerprint_of_the_stages_that_commit_under_them(leaf):
    cfg = _changed(leaf)
    assert {st.name for st in STAGES if st.config_hash(cfg) != st.config_hash(BASE)} == COMMIT_READS[leaf]


# ---------------------------------------------------------------- code versions


@pytest.fixture
def tree(tmp_path) -> Path:
    """A copy of the project's code (flows, tasks, infra) to edit."""
    for pkg in ("flows", "tasks", "infra"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


GENERATION = "tasks.generation"


def test_generation_reaches_the_search_and_its_backends_but_not_the_report():
    mods = reached(GENERATION)
    assert {"tasks.search", "tasks.common", "infra.prompts", "infra.backends.tiny", "infra.pool"} <= set(mods)
    assert not {"tasks.report", "tasks.metrics", "flows.pipeline", "tasks.train"} & set(mods)
    assert code_version(GENERATION) == code_version(GENERATION, ROOT)


def test_a_docstring_edit_or_an_unreached_module_leaves_the_code_version_alone_and_a_code_change_does_not(tree, tmp_path_factory):
    before = code_version(GENERATION, tree)
    assert before == code_version(GENERATION)  # the copy is the same code

    docs = tmp_path_factory.mktemp("docs")
    shutil.copytree(tree, docs, dirs_exist_ok=True)
    search = docs / "tasks" / "search.py"
    text = search.read_text()
    first = text.index('"""')
    search.write_text(text[:first + 3] + "A fixed typo. " + text[first + 3:])  # the module docstring
    _edit(docs / "tasks" / "common.py", "validate-then-commit.", "validate, then commit.")  # ... and a reached module's
    (docs / "tasks" / "report.py").write_text((docs / "tasks" / "report.py").read_text() + "\nSOMETHING_NEW = 1\n")
    assert code_version(GENERATION, docs) == before

    code = tmp_path_factory.mktemp("code")
    shutil.copytree(tree, code, dirs_exist_ok=True)
    (code / "tasks" / "search.py").write_text((code / "tasks" / "search.py").read_text() + "\nSOMETHING_NEW = 1\n")
    assert code_version(GENERATION, code) != before

    prompt = tmp_path_factory.mktemp("prompt")
    shutil.copytree(tree, prompt, dirs_exist_ok=True)
    template = prompt / "infra" / "prompts" / "solve_v1.txt"
    template.write_text(template.read_text() + " ")
    assert code_version(GENERATION, prompt) != before  # a prompt template the stage loads is behaviour


def test_a_reached_modules_function_docstring_does_not_count_but_its_body_does(tree, tmp_path_factory):
    before = code_version(GENERATION, tree)
    variants = {}
    for name, new in (("doc", '    """The one true search, documented better."""\n'), ("body", "    _unused = 1\n")):
        root = tmp_path_factory.mktemp(name)
        shutil.copytree(tree, root, dirs_exist_ok=True)
        f = root / "tasks" / "search.py"
        lines = f.read_text().splitlines(keepends=True)
        at = next(i for i, line in enumerate(lines) if line.startswith("def ") and line.rstrip().endswith(":"))
        body = lines[at + 1]
        if name == "doc" and body.lstrip().startswith('"""'):  # replace its docstring rather than add one
            end = next(j for j in range(at + 1, len(lines)) if lines[j].rstrip().endswith('"""') and (j > at + 1 or lines[j].count('"""') == 2))
            lines[at + 1:end + 1] = [new]
        else:
            lines.insert(at + 1, new)
        f.write_text("".join(lines))
        variants[name] = code_version(GENERATION, root)
    assert variants["doc"] == before and variants["body"] != before


def test_each_stage_has_its_own_code_version():
    versions = {st.name: code_version(st.module) for st in STAGES}
    assert len(set(versions.values())) == len(versions)
    assert all(st.module.startswith("tasks.") for st in STAGES)


def test_shard_threads_never_parse_at_once(monkeypatch):
    """CPython 3.11's ast is not safe across threads (a run's generation shard failed with
    `SystemError: AST constructor recursion depth mismatch` while shard tasks fingerprinted in
    Prefect's worker threads): code versions computed from many threads parse one at a time."""
    import ast
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from tasks import code_version as cv

    active, most, guard = [0], [0], threading.Lock()
    real = ast.parse

    def parse(*a, **kw):
        with guard:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.002)
        try:
            return real(*a, **kw)
        finally:
            with guard:
                active[0] -= 1

    monkeypatch.setattr(ast, "parse", parse)
    cv.code_version.cache_clear()
    cv.module_digest.cache_clear()
    try:
        with ThreadPoolExecutor(4) as ex:
            versions = list(ex.map(cv.code_version, ["tasks.generation", "tasks.self_correction", "tasks.diversity", "tasks.evaluate"]))
    finally:
        cv.code_version.cache_clear()
        cv.module_digest.cache_clear()
    assert len(versions) == 4 and most[0] == 1
