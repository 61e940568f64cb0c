"""Trainer-ready exports of a run's ``pairs`` (DPO), ``step_pairs`` (step-level DPO) and ``sft`` tables.

Column names are those TRL's trainers read: ``prompt``, ``chosen``, ``rejected`` (DPO and
step DPO, whose prompt already holds the shared prefix steps) and ``prompt``,
``completion`` (SFT), plus lineage columns. With ``chat=True`` the text
columns become message lists (TRL's conversational format). Both a JSONL and a Parquet
file are written; ``datasets.load_dataset("json"|"parquet", data_files=...)`` loads
either unchanged. Beside them the export writes the folder's dataset card, ``README.md``
(``tasks.card``): through its YAML configs ``datasets.load_dataset(folder)`` (and
``load_dataset(folder, "<format>")``) loads the Parquet files of every format exported there
from the same run; its body describes the run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from infra.storage import RunStore
from tasks import card

COLUMNS = {
    "dpo": ("pairs", ["prompt", "chosen", "rejected", "pair_id", "problem_id", "stage", "chosen_chain_id", "rejected_chain_id",
                      "chosen_score", "rejected_score", "margin"]),
    "sft": ("sft", ["prompt", "completion", "sft_id", "problem_id", "stage", "chain_id"]),
    "step_dpo": ("step_pairs", ["prompt", "chosen", "rejected", "pair_id", "problem_id", "stage", "source", "depth",
                                "chosen_chain_id", "rejected_chain_id", "chosen_score", "rejected_score"]),
}


def _chat(rows: list[dict], fmt: str) -> list[dict]:
    out = []
    for r in rows:
        r = dict(r)
        r["prompt"] = [{"role": "user", "content": r["prompt"]}]
        for key in ("chosen", "rejected", "completion"):
            if key in r:
                r[key] = [{"role": "assistant", "content": r[key]}]
        out.append(r)
    return out


class ExportError(RuntimeError):
    """The export cannot be written where it was asked to go (``--to`` is a file, or holds a
    ``README.md`` that ``sphere export`` did not write, or the place is read-only, full or
    missing); the message names the place. Nothing is left there."""


def export_run(run_dir: Path, fmt: str, to: Path, *, chat: bool = False) -> list[Path]:
    """Write ``<fmt>.jsonl``, ``<fmt>.parquet`` (stamped with the run: ``card.RUN_KEY``) and the
    dataset card ``README.md`` of the run into the folder ``to`` (made if missing); returns the
    three paths. The card lists this export and the other formats exported there from the same
    run (``tasks.card``); a ``README.md`` there that ``sphere export`` did not write is never
    replaced (``ExportError``, nothing written). All or nothing: the three files are written
    under temp names and renamed into place together; when anything fails, the temp files and
    the folders this call made are removed, files of an earlier export stay as they were, and
    ``ExportError`` names the place (an error reading the run, such as ``StorageError``,
    propagates after the same clean-up)."""
    table_name, columns = COLUMNS[fmt]
    store = RunStore.at(run_dir)
    table = store.read_table(table_name).select(columns)
    rows = table.to_pylist()
    if chat:
        rows = _chat(rows, fmt)
    out = pa.Table.from_pylist(rows) if rows else table
    out = out.replace_schema_metadata({card.RUN_KEY: store.run_id.encode()})
    to = Path(to)
    blocker = next((p for p in (to, *to.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ExportError(f"cannot write the {fmt} export to {to}: {blocker} is a file; --to takes a folder, "
                          f"into which {fmt}.jsonl, {fmt}.parquet and {card.CARD} are written")
    try:
        card.check_card_place(to)
    except card.ForeignCard as e:
        raise ExportError(f"cannot write the {fmt} export to {to}: {e}") from None
    facts = card.run_facts(store)
    made = [p for p in (to, *to.parents) if not p.exists()]
    final = [to / f"{fmt}.jsonl", to / f"{fmt}.parquet", to / card.CARD]
    tmps = [p.with_name(f".{p.name}.{os.getpid()}.tmp") for p in final]
    try:
        to.mkdir(parents=True, exist_ok=True)
        tmps[0].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        pq.write_table(out, tmps[1], compression="zstd")
        listed, others = card.folder_files(to, store.run_id, {fmt: tmps[1]})
        tmps[2].write_text(card.card_text(facts, listed, others, to.as_posix()), encoding="utf-8")
        for tmp in tmps:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        for tmp, path in zip(tmps, final):
            os.replace(tmp, path)
    except BaseException as e:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        for d in made:  # deepest first
            try:
                d.rmdir()
            except OSError:
                pass
        if isinstance(e, OSError):
            raise ExportError(f"cannot write the {fmt} export to {to}: {e.strerror or e}") from None
        raise
    return final
