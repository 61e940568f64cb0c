"""What is wrong with a run on disk, found without stopping at the first problem.

A run is **damaged** when one of its records (``config.json``, ``status.json``, a manifest, a
stage or table marker) cannot be read, or a committed part no longer matches its marker. It
is **incomplete** when a record that commits data names a file that is gone: a stage marker
lists a table whose marker (or part) is missing, or the seeds manifest lists a problems shard
that has no marker. Either way the shard's rows would silently be missing from every reader.

- ``check(store)`` lists every ``Problem``, each message naming the file and its repair; the
  catalog's ``runs`` view shows them (status ``damaged`` or ``incomplete``) and ``sphere export``
  refuses such a run.
- ``intact_parts(store, table)`` is ``RunStore.committed_parts`` without the failure: a damaged
  shard is left out (the catalog shows the run's other shards and every other run).
- ``set_aside(store)`` is the repair a resume makes: damaged records, and the stage markers
  that commit a damaged or missing file, move to ``_superseded/<when>-damaged/`` (nothing is
  deleted), so the shards they covered count as not done and are recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from infra.storage import DamagedFile, RunStore, StorageError, verify_part

SEEDS_MANIFEST = "seeds.manifest.json"  # lists the seeds stage's ``problems`` shards


@dataclass(frozen=True)
class Problem:
    path: Path
    kind: str  # "damaged" (unreadable, or changed after its commit) or "missing"
    message: str  # names the file and its repair
    commits: tuple[Path, ...] = ()  # the stage markers that count the file as committed


def _commits(store: RunStore, table_marker: Path) -> tuple[Path, ...]:
    """The stage marker(s) that commit a table marker ``<table>.<stage>[-<t>].<shard>.json``:
    that stage's marker of the same shard, else (the seeds stage commits all its shards in one)
    every marker of the stage."""
    parts = table_marker.name.split(".")
    if len(parts) < 4:
        return ()
    stage, shard = parts[1].split("-")[0], parts[2]
    same = store.stage_marker_path(stage, shard)
    return (same,) if same.is_file() else tuple(sorted((store.run_dir / "_done" / "stages").glob(f"{stage}.*.json")))


def _missing(store: RunStore, path: Path, why: str, commits: tuple[Path, ...]) -> Problem:
    return Problem(path, "missing", f"{path} is missing: {why}, so its rows would be left out; {store.repair(path)}", commits)


def _readable(store: RunStore, path: Path, commits: tuple[Path, ...], out: list[Problem]) -> dict | None:
    try:
        return store.read_record(path)
    except DamagedFile as e:
        out.append(Problem(path, "damaged", str(e), commits))
        return None


def check(store: RunStore, verify_parts: bool = True) -> list[Problem]:
    """Every problem of the run, in a stable order (records, markers, then parts when
    ``verify_parts``: their size, rows and sha256 against their markers)."""
    run, done = store.run_dir, store.run_dir / "_done"
    out: list[Problem] = []
    for name in ("config.json", "status.json"):
        if (run / name).is_file():
            _readable(store, run / name, (), out)
    seeds = sorted((done / "stages").glob("seeds.*.json"))
    for path in sorted(done.glob("*.manifest.json")):
        m = _readable(store, path, tuple(seeds) if path.name == SEEDS_MANIFEST else (), out)
        for shard in (m or {}).get("shards", []) if path.name == SEEDS_MANIFEST else ():
            if not store.marker_path("problems", "seeds", shard).is_file():
                out.append(_missing(store, store.marker_path("problems", "seeds", shard), f"{path} lists problems shard {shard}",
                                    tuple(seeds)))
    for path in sorted(done.glob("*.json")):
        if not path.name.endswith(".manifest.json"):
            _readable(store, path, _commits(store, path), out)
    for path in sorted((done / "stages").glob("*.json")):
        m = _readable(store, path, (path,), out)
        stage, _, shard = path.stem.partition(".")
        for table in (m or {}).get("tables", []):
            marker, part = store.marker_path(table, stage, shard), store.part_path(table, stage, shard)
            if not marker.is_file():
                out.append(_missing(store, marker, f"{path} commits table {table} of shard {shard} with it", (path,)))
            elif not part.is_file():
                out.append(_missing(store, part, f"its marker {marker} says it was committed", (path,)))
    if verify_parts:
        for table in sorted(p.name for p in run.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
            _verify(store, table, out)
    return out


def _verify(store: RunStore, table: str, out: list[Problem]) -> list[Path]:
    """The committed parts of ``table`` that match their markers; the others go to ``out``."""
    good = []
    for part in sorted((store.run_dir / table).glob("*/part-*.parquet")):
        stage, shard = part.parent.name, part.stem.removeprefix("part-")
        try:
            m = store.marker(table, stage, shard)
            if m is not None:
                good.append(verify_part(part, m))
        except DamagedFile:  # the marker itself: listed with the records
            continue
        except StorageError as e:  # PartCorrupt
            out.append(Problem(part, "damaged", str(e), _commits(store, store.marker_path(table, stage, shard))))
    return good


def intact_parts(store: RunStore, table: str) -> list[Path]:
    """The committed parts of ``table`` in the run, verified; a damaged shard is left out
    (``check`` names it)."""
    return _verify(store, table, [])


def summary(problems: list[Problem], limit: int = 3) -> str:
    """The problems in one text (the first ``limit`` in full, then how many more)."""
    more = len(problems) - limit
    return "; ".join(p.message for p in problems[:limit]) + (f"; and {more} more" if more > 0 else "")


def set_aside(store: RunStore) -> list[Problem]:
    """Move the run's damaged records (not its config: a resume cannot rebuild it) and the
    stage markers that commit a damaged or missing file to ``_superseded/<when>-damaged/``,
    so a resume recomputes exactly those shards. Parts are not re-hashed here (the readers
    verify them). Call only while holding the run's writer lock. Returns the problems found."""
    problems = [p for p in check(store, verify_parts=False) if p.path.name != "config.json"]
    move = [p.path for p in problems if p.kind == "damaged"] + [c for p in problems for c in p.commits]
    move = [p for p in dict.fromkeys(move) if p.is_file()]
    if move:
        store.supersede(move, "damaged")
    return problems
