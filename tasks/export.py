"""Trainer-ready exports of a run's ``pairs`` (DPO) and ``sft`` tables.

Column names are those TRL's trainers read: ``prompt``, ``chosen``, ``rejected`` (DPO)
and ``prompt``, ``completion`` (SFT), plus lineage columns. With ``chat=True`` the text
columns become message lists (TRL's conversational format). Both a JSONL and a Parquet
file are written; ``datasets.load_dataset("json"|"parquet", data_files=...)`` loads
either unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from infra.storage import RunStore, atomic_write_text, write_parquet_atomic

COLUMNS = {
    "dpo": ("pairs", ["prompt", "chosen", "rejected", "pair_id", "problem_id", "stage", "chosen_chain_id", "rejected_chain_id",
                      "chosen_score", "rejected_score", "margin"]),
    "sft": ("sft", ["prompt", "completion", "sft_id", "problem_id", "stage", "chain_id"]),
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


def export_run(run_dir: Path, fmt: str, to: Path, *, chat: bool = False) -> list[Path]:
    table_name, columns = COLUMNS[fmt]
    store = RunStore.at(run_dir)
    rows = store.read_table(table_name).select(columns).to_pylist()
    if chat:
        rows = _chat(rows, fmt)
    to.mkdir(parents=True, exist_ok=True)
    jsonl, parquet = to / f"{fmt}.jsonl", to / f"{fmt}.parquet"
    atomic_write_text(jsonl, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_parquet_atomic(pa.Table.from_pylist(rows) if rows else store.read_table(table_name).select(columns), parquet)
    return [jsonl, parquet]
