"""One writer at a time: an exclusive advisory lock per run (and per evolve, per sweep).

``writer_lock(path, what)`` holds ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``path`` (``writer.lock``
in the run directory, ``<data_root>/evolve/<id>.lock``, ``<data_root>/sweeps/<id>.lock``) for the
``with`` block and writes the holder into it (pid, host, start time, command). A second writer
is refused at once with ``WriterLocked`` naming the holder; it never waits. The kernel drops
the lock when the holder's process ends however it ends (``kill -9`` included), so a crashed
writer never leaves a run locked; the file stays, naming the last holder.

Within one process the lock is reentrant (the CLI takes it to print a clean refusal, then the
flow it calls takes it again). Readers (``query``, ``report``, ``export``) never take it.
flock is local to a machine (and to NFS clients that support it): two hosts writing one run on
a file system without lock support are not stopped. On an object-store data root (``infra.fs``)
the lock is a local file under the cache folder standing for the run's URI: it keeps writers on
one host apart, not writers on two hosts.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from infra.fs import StorePath, as_path, lock_file, writer_cache

LOCK_NAME = "writer.lock"

_HELD: dict[str, list] = {}  # path -> [fd, depth]: the locks this process holds
_GUARD = threading.Lock()


class WriterLocked(RuntimeError):
    """Another live process is writing this run (or evolve, or sweep); the message names it."""


def holder(path: Path) -> dict:
    """What the lock file says about its (last) holder; {} when it says nothing readable."""
    try:
        rec = json.loads(Path(path).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return rec if isinstance(rec, dict) else {}


def _refusal(path: Path, what: str) -> WriterLocked:
    h = holder(path)
    who = f"pid {h.get('pid', '?')} on host {h.get('host', '?')}" if h else "another process (it is just starting)"
    since = f" since {h['since']}" if h.get("since") else ""
    cmd = f" ({h['command']})" if h.get("command") else ""
    return WriterLocked(f"{what} is being written by {who}{since}{cmd}; one writer at a time. Wait for it to end or stop it "
                        f"(the lock frees itself when that process ends); reading it (query, report, export) works meanwhile. "
                        f"Lock: {path}")


def _acquire(path: Path, what: str) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _refusal(path, what) from None
    except BaseException:
        os.close(fd)
        raise
    rec = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "command": " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv))[:300]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(rec) + "\n").encode(), 0)
    return fd


@contextmanager
def writer_lock(path: Path | str, what: str) -> Iterator[Path]:
    """Hold the exclusive writer lock ``path`` for the block (``what`` names the thing locked in
    the refusal, e.g. ``run r1``). ``WriterLocked`` at once when another process holds it;
    reentrant within this process. Yields the lock file's path."""
    key = os.path.abspath(lock_file(as_path(path)) if isinstance(as_path(path), StorePath) else path)
    with _GUARD:
        if key in _HELD:
            _HELD[key][1] += 1
        else:
            _HELD[key] = [_acquire(Path(key), what), 1]
    try:
        yield Path(key)
    finally:
        with _GUARD:
            entry = _HELD[key]
            entry[1] -= 1
            if entry[1] == 0:
                del _HELD[key]
                os.close(entry[0])  # closing the only descriptor releases the flock


@contextmanager
def run_lock(run_dir: Path | str) -> Iterator[Path]:
    """The writer lock of a run, ``<run_dir>/writer.lock``. Taken for a run that does not exist
    yet, it creates the directory; if no ``config.json`` was written by the time it is released
    (the run never started), the lock file and the then empty directory are removed again."""
    run_dir = as_path(run_dir)
    if isinstance(run_dir, StorePath):  # an object store has no locks and no empty folders: a local lock file
        with writer_lock(run_dir / LOCK_NAME, f"run {run_dir.name}") as path, writer_cache(run_dir):
            yield path
        return
    new = not run_dir.exists()
    with writer_lock(run_dir / LOCK_NAME, f"run {run_dir.name}") as path:
        try:
            yield path
        finally:
            if new and not (run_dir / "config.json").exists():
                path.unlink(missing_ok=True)
                try:
                    run_dir.rmdir()
                except OSError:  # something else was written there: keep it
                    pass
