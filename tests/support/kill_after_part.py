"""``sphere`` that SIGKILLs itself right after the N-th part of one table and stage is written
to the store and before that part's marker: the moment the commit protocol must survive.

    python -m tests.support.kill_after_part N TABLE STAGE -- <sphere arguments>

The kill is a real ``kill -9`` of the driver (its actors end with it, ``infra.lifetime``); only
the moment is chosen here, by wrapping ``infra.storage.write_parquet_atomic``.
"""

import os
import signal
import sys

from infra import storage

n, table, stage = int(sys.argv[1]), sys.argv[2], sys.argv[3]
assert sys.argv[4] == "--"
_write, _count = storage.write_parquet_atomic, [0]


def write_parquet_atomic(t, path, *args):
    out = _write(t, path, *args)
    if path.parent.name == stage and path.parent.parent.name == table:
        _count[0] += 1
        if _count[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
    return out


storage.write_parquet_atomic = write_parquet_atomic
sys.argv = ["sphere", *sys.argv[5:]]

from flows.cli import app  # noqa: E402

app()
