"""The dataset card (``README.md``, Hugging Face format) that ``sphere export`` writes beside its files.

``datasets.load_dataset(folder)`` reads the folder through the card's YAML front matter:
``configs`` holds one config per format exported there from the same run (``dpo``, ``sft``,
``step_dpo``), each naming its Parquet file as split ``train`` (the first in ``COLUMNS`` order is
the default); ``dataset_info`` gives each config's features (from the file's Arrow schema) and
row count, so the library checks what it loads. Only the Parquet files are configs: the
``datasets`` library builds every config of a folder with one builder, chosen from the first
config's files, so a JSONL config beside a Parquet one would not load. The JSONL files hold the
same rows.

The body describes the run the rows come from: its id and settings, the models that wrote its
chains, its QDC table (``metrics``), rows per stage of ``chains``, ``pairs``, ``step_pairs`` and
``sft``, problems per route, and quarantined rows per check. Every count is an aggregate over
the run's committed parts, the parts ``sphere query`` reads, grouped by the same columns.

The exporter stamps each Parquet file it writes with the run (schema metadata ``RUN_KEY``), so
a card lists only that run's files; files of another run (or of an export older than the
stamp) left in the folder are named in the body and are no config.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from infra.catalog import sql_list
from infra.config import backend_name
from infra.storage import RunStore

CARD = "README.md"
MARK = "<!-- dataset card written by `sphere export`: each export into this folder rewrites it -->"
RUN_KEY = b"sphere.run_id"
FORMATS = ("dpo", "sft", "step_dpo")  # config order; the first present is the default config
TAGS = {"dpo": ["preference", "dpo"], "step_dpo": ["preference", "dpo", "step-dpo"], "sft": ["sft"]}
QDC = ("accuracy", "vendi_q1", "distinct_2", "near_duplicate_rate", "steps_per_chain")
COUNTED = ("chains", "pairs", "step_pairs", "sft")
SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"),
         (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"), (10_000_000_000, "1B<n<10B"))


class CardError(ValueError):
    """A column of an exported file has an Arrow type the card's ``features`` cannot describe."""


class ForeignCard(RuntimeError):
    """The folder holds a ``README.md`` that ``sphere export`` did not write (it is never replaced)."""


@dataclass(frozen=True)
class DataFile:
    """One exported Parquet file as the card lists it: the format (config name), its name in
    the folder, Arrow schema, rows, uncompressed bytes and bytes on disk."""

    fmt: str
    name: str
    schema: pa.Schema
    rows: int
    num_bytes: int
    size: int


@dataclass
class RunFacts:
    """What the card says about a run, each list sorted: ``rows`` (table, stage, rows),
    ``models`` (stage, model, chains), ``routes`` (route, problems), ``quarantine`` (stage,
    table, check, rows), ``qdc`` ((stage, table) -> metric -> value) with ``qdc_n`` (rows measured)."""

    run_id: str
    config: dict
    problems: int = 0
    rows: list[tuple] = field(default_factory=list)
    models: list[tuple] = field(default_factory=list)
    routes: list[tuple] = field(default_factory=list)
    quarantine: list[tuple] = field(default_factory=list)
    qdc: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    qdc_n: dict[tuple[str, str], int] = field(default_factory=dict)


def run_facts(store: RunStore) -> RunFacts:
    """The facts of the run in ``store``, aggregated by DuckDB over its committed parts (each
    verified against its marker; a changed one raises ``PartCorrupt``). Tables with no
    committed part count nothing."""
    import duckdb

    con = duckdb.connect()

    def agg(table: str, select: str) -> list[tuple]:
        """(*select, count) per distinct ``select`` of ``table``'s committed rows; ``select`` empty: [(count,)]."""
        parts = store.committed_parts(table)
        if not parts:
            return [] if select else [(0,)]
        src = f"read_parquet({sql_list(parts)}, union_by_name = true)"
        if not select:
            return con.sql(f"SELECT count(*) FROM {src}").fetchall()
        return con.sql(f"SELECT {select}, count(*) FROM {src} GROUP BY ALL ORDER BY ALL").fetchall()

    try:
        facts = RunFacts(store.run_id, store.load_config())
        facts.problems = agg("problems", "")[0][0]
        facts.rows = [(t, stage, n) for t in COUNTED for stage, n in agg(t, "stage")]
        facts.models = agg("chains", "stage, model")
        facts.routes = agg("routes", "route")
        facts.quarantine = agg("quarantine", 'stage, "table", "check"')
        parts = store.committed_parts("metrics")
        if parts:
            q = f"SELECT stage, \"table\", metric, value, n FROM read_parquet({sql_list(parts)}) WHERE metric IN ({', '.join(map(repr, QDC))})"
            for stage, table, metric, value, n in con.sql(q).fetchall():
                facts.qdc.setdefault((stage, table), {})[metric] = value
                facts.qdc_n[(stage, table)] = n
    finally:
        con.close()
    return facts


def data_file(path: Path, fmt: str, name: str | None = None) -> DataFile:
    """The ``DataFile`` of the Parquet file at ``path`` (read from its footer), listed under ``name``."""
    md = pq.read_metadata(path)
    return DataFile(fmt, name or Path(path).name, md.schema.to_arrow_schema(), md.num_rows,
                    sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups)), os.path.getsize(path))


def run_of(path: Path) -> str | None:
    """The run an exported Parquet file was stamped with, or None (not stamped, or unreadable)."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException):
        return None
    value = meta.get(RUN_KEY)
    return value.decode() if value else None


def folder_files(folder: Path, run_id: str, written: dict[str, Path]) -> tuple[list[DataFile], list[str]]:
    """The data files a card of ``run_id`` in ``folder`` lists, in ``FORMATS`` order: those of
    ``written`` (format -> the file just written, perhaps under a temp name) and the
    ``<format>.parquet`` already in the folder stamped with the same run; and the names of the
    other ``<format>.parquet`` files there (another run's, or unstamped)."""
    listed, others = [], []
    for fmt in FORMATS:
        name = f"{fmt}.parquet"
        if fmt in written:
            listed.append(data_file(written[fmt], fmt, name))
        elif (folder / name).is_file():
            if run_of(folder / name) == run_id:
                listed.append(data_file(folder / name, fmt))
            else:
                others.append(name)
    return listed, others


def check_card_place(folder: Path) -> None:
    """``ForeignCard`` when ``folder`` holds a ``README.md`` that is not a card of ``sphere export``."""
    path = Path(folder) / CARD
    if not path.exists():
        return
    try:
        ours = path.is_file() and MARK in path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        ours = False
    if not ours:
        raise ForeignCard(f"{path} exists and was not written by sphere export; export into another folder "
                          f"(the export writes its dataset card there as {CARD})")


# ---------------------------------------------------------------- the YAML front matter


_INTS = {pa.int8(): "int8", pa.int16(): "int16", pa.int32(): "int32", pa.int64(): "int64", pa.uint8(): "uint8",
         pa.uint16(): "uint16", pa.uint32(): "uint32", pa.uint64(): "uint64"}
_PLAIN = {**_INTS, pa.null(): "null", pa.bool_(): "bool", pa.float16(): "float16", pa.float32(): "float32",
          pa.float64(): "float64", pa.string(): "string", pa.large_string(): "large_string", pa.binary(): "binary",
          pa.large_binary(): "large_binary"}


def feature(t: pa.DataType):
    """The ``datasets`` YAML feature of an Arrow type (as ``Features._to_yaml_list`` writes it):
    ``{"dtype": name}`` for a plain type, ``{"list": ...}`` for a list (of a plain type: its
    name; of a struct: the struct's field list), ``{"struct": [...]}`` for a struct."""
    if t in _PLAIN:
        return {"dtype": _PLAIN[t]}
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = feature(t.value_type)
        key = "list" if pa.types.is_list(t) else "large_list"
        return {key: inner.get("dtype", inner.get("struct", inner))}
    if pa.types.is_struct(t):
        return {"struct": features(pa.schema(list(t)))}
    raise CardError(f"the dataset card cannot describe a column of type {t}")


def features(schema: pa.Schema) -> list[dict]:
    """The ``features`` list of ``dataset_info``: one ``{"name": column, **feature}`` per column, in order."""
    return [{"name": f.name, **feature(f.type)} for f in schema]


def size_category(rows: int) -> str:
    """The Hugging Face ``size_categories`` value of a dataset of ``rows`` rows."""
    return next((label for limit, label in SIZES if rows < limit), "n>10B")


def front_matter(run_id: str, files: list[DataFile]) -> dict:
    """The card's YAML metadata: one config (and ``dataset_info`` entry) per listed file."""
    configs = [{"config_name": f.fmt, "data_files": [{"split": "train", "path": f.name}], **({"default": True} if i == 0 else {})}
               for i, f in enumerate(files)]
    infos = [{"config_name": f.fmt, "features": features(f.schema),
              "splits": [{"name": "train", "num_bytes": f.num_bytes, "num_examples": f.rows}],
              "download_size": f.size, "dataset_size": f.num_bytes} for f in files]
    tags = ["synthetic", "math"] + [t for f in files for t in TAGS[f.fmt]]
    return {"configs": configs, "dataset_info": infos, "license": "other", "pretty_name": f"SPHERE Factory run {run_id}",
            "tags": list(dict.fromkeys(tags)), "task_categories": ["text-generation"],
            "size_categories": [size_category(sum(f.rows for f in files))]}


# ---------------------------------------------------------------- the body


def _cell(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.3f}" if v == v else "—"
    return str(v).replace("|", "\\|").replace("\n", " ")


def md_table(header: list[str], rows: list, empty: str = "None.") -> list[str]:
    """A Markdown table (pipes in cells escaped, floats to 3 decimals, None and NaN as —);
    the line ``empty`` when there is no row."""
    if not rows:
        return [empty]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]


def settings(facts: RunFacts) -> list[tuple[str, object]]:
    """(setting, value) rows of the run's config summary, values as configured."""
    c = facts.config
    s, seeds = c.get("search", {}), c.get("seeds", {})
    if seeds.get("kind") == "file":
        source = f"file ({seeds.get('format')}): {', '.join(seeds.get('paths') or [])}"
    else:
        source = f"builtin (seed {seeds.get('seed')}, {seeds.get('min_steps')}-{seeds.get('max_steps')} operations)"
    div = c.get("diversity", {})
    sc = c.get("self_correction", {})
    return [("policy (model/backend)", backend_name(c.get("policy"))), ("search candidates (E)", s.get("candidates")),
            ("temperature (T)", s.get("temperature")), ("max_depth", s.get("max_depth")),
            ("scorer", c.get("scorer", {}).get("kind")), ("seeds", source), ("seed problems in the run", facts.problems),
            ("self-correction", backend_name(sc.get("policy") or c.get("policy")) if sc.get("enabled") else "off"),
            ("diversity induction (small policy)", backend_name(div.get("small_policy")) if div.get("enabled") else "off"),
            ("run seed", c.get("seed"))]


def body(facts: RunFacts, files: list[DataFile], others: list[str], where: str) -> str:
    """The card's Markdown body (see the module docstring)."""
    lines = [MARK, "", f"# SPHERE Factory export of run `{facts.run_id}`", "",
             "Synthetic math reasoning data made by SPHERE Factory (self-generation, self-correction and "
             "diversity induction over a pruned step search): " + ", ".join(f"`{f.fmt}` ({f.rows:,} rows)" for f in files) + ".",
             "", "**License:** `other` in the front matter above is a placeholder: set `license:` before sharing this "
             "dataset. The rows derive from the seed problems and from the policy models' outputs, whose terms apply.", "",
             "## Files", ""]
    lines += md_table(["config", "file", "rows", "columns"], [(f.fmt, f.name, f.rows, ", ".join(f.schema.names)) for f in files])
    lines += ["", "Each `<config>.jsonl` beside its Parquet file holds the same rows as JSON lines."]
    if others:
        lines += ["", f"Also in this folder and not part of this card (another run's export, or unstamped): {', '.join(others)}."]
    default = files[0].fmt if files else "dpo"
    lines += ["", "## How to load", "", "```python", "from datasets import load_dataset", "",
              f"ds = load_dataset({json.dumps(where)})  # config {json.dumps(default)}, the default"]
    lines += [f"ds = load_dataset({json.dumps(where)}, {json.dumps(f.fmt)})" for f in files]
    lines += ["```", "", "## Run configuration", "", f"Run id: `{facts.run_id}`.", ""]
    lines += md_table(["setting", "value"], [(k, str(v)) for k, v in settings(facts)])
    lines += ["", "## Models", "", "The models that wrote the run's chains (`model` of `chains`).", ""]
    lines += md_table(["stage", "model", "chains"], facts.models)
    lines += ["", "## Quality, diversity, complexity", "", "From the run's `metrics` table (rows: the rows measured).", ""]
    lines += md_table(["stage", "table", "rows", *QDC],
                      [(st, t, facts.qdc_n[(st, t)], *(facts.qdc[(st, t)].get(m) for m in QDC)) for st, t in sorted(facts.qdc)])
    lines += ["", "## Rows per stage", "", "Rows of `chains`, `pairs`, `step_pairs` and `sft` by their `stage` column.", ""]
    lines += md_table(["table", "stage", "rows"], facts.rows)
    lines += ["", "## Routes", "", "Problems per route (`routes`).", ""]
    lines += md_table(["route", "problems"], facts.routes)
    lines += ["", "## Quarantine", "", "Rows set aside by their validation suite, per check (`quarantine`).", ""]
    lines += md_table(["stage", "table", "check", "rows"], facts.quarantine, "No row was quarantined.")
    return "\n".join(lines) + "\n"


def card_text(facts: RunFacts, files: list[DataFile], others: list[str], where: str) -> str:
    """The whole ``README.md``: YAML front matter, then the body; ``where`` is the folder as the
    card's loading example names it."""
    meta = yaml.safe_dump(front_matter(facts.run_id, files), sort_keys=False, allow_unicode=True)
    return f"---\n{meta}---\n\n{body(facts, files, others, where)}"
