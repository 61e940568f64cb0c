"""Hard time limits for Python calls, from any thread: a small pool of worker processes.

``TimeoutPool(workers=2).call(fn, *args, timeout_s=5)`` runs ``fn(*args)`` in a worker
process and returns its result, or raises ``CallTimeout`` once ``timeout_s`` has passed,
after killing that worker (SIGKILL); the next call that needs a worker starts a fresh
one. Unlike ``signal.alarm`` this works on any thread (Prefect task threads, Ray actors)
and stops code that never returns to the interpreter.

Contracts:
- ``fn`` is pickled by reference (a module-level function) and ``args``/the result by
  value. An exception inside ``fn`` comes back as ``CallFailed`` (message only, never the
  remote traceback object); a worker that dies or breaks the protocol gives ``CallFailed``.
- Nothing starts at construction: workers start on demand, at most ``workers`` at once,
  and each one imports ``preload`` (then reports ready) before its first call, so module
  import time never counts against ``timeout_s``.
- Thread-safe: each call holds one worker exclusively; a caller that finds every worker
  busy waits up to ``queue_timeout_s`` (then ``PoolBusy``, a ``CallTimeout``).
- Workers are plain ``python -c`` subprocesses (no ``multiprocessing``: nothing of the
  caller's ``__main__`` is re-imported), in their own session (a terminal's Ctrl-C is the
  parent's business), with stdout and stderr sent to /dev/null by default; they exit when
  the parent closes their stdin or dies, and the pool kills them at ``close()``/exit.
- ``memory_limit_bytes`` sets RLIMIT_AS in each worker after ``preload``: a call that
  needs more fails (``CallFailed``) instead of swapping the machine.
- A pool used after ``os.fork()`` forgets the parent's workers and starts its own.
"""

from __future__ import annotations

import atexit
import json
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Callable

_HEADER = struct.Struct(">I")
_MAX_FRAME = 64 * 1024 * 1024


class CallTimeout(TimeoutError):
    """The call did not finish within its limit; its worker was killed."""


class PoolBusy(CallTimeout):
    """No worker became free within ``queue_timeout_s``."""


class CallFailed(RuntimeError):
    """The call raised in the worker, or the worker died or could not start."""


class _Worker:
    def __init__(self, preload: tuple[str, ...], memory_limit_bytes: int | None, stderr: Any) -> None:
        spec = json.dumps({"path": list(sys.path), "preload": list(preload), "mem": memory_limit_bytes})
        boot = "import sys,json;s=json.loads(sys.argv[1]);sys.path[:]=s['path'];from infra.timeout_pool import _serve;_serve(s)"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", boot, spec],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            close_fds=True,
            start_new_session=True,
        )
        self.ready = False

    def send(self, obj: Any) -> None:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        self.proc.stdin.write(_HEADER.pack(len(data)) + data)
        self.proc.stdin.flush()

    def recv(self, deadline: float) -> Any:
        (size,) = _HEADER.unpack(self._read(_HEADER.size, deadline))
        if size > _MAX_FRAME:
            raise CallFailed(f"worker sent a {size}-byte frame")
        return pickle.loads(self._read(size, deadline))

    def _read(self, n: int, deadline: float) -> bytes:
        fd, buf = self.proc.stdout.fileno(), bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise CallTimeout("deadline passed")
            chunk = os.read(fd, n - len(buf))
            if not chunk:
                raise CallFailed(f"worker exited (code {self.proc.poll()})")
            buf += chunk
        return bytes(buf)

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=10)
        except Exception:  # already gone, or unkillable: nothing more to do from here
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except Exception:
                pass


class TimeoutPool:
    """Run picklable calls in worker processes with a hard per-call time limit."""

    def __init__(
        self,
        workers: int = 2,
        *,
        preload: tuple[str, ...] = (),
        memory_limit_bytes: int | None = None,
        start_timeout_s: float = 60.0,
        queue_timeout_s: float = 120.0,
        stderr: Any = subprocess.DEVNULL,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.workers, self.preload, self.memory_limit_bytes = workers, tuple(preload), memory_limit_bytes
        self.start_timeout_s, self.queue_timeout_s, self.stderr = start_timeout_s, queue_timeout_s, stderr
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._live = 0
        self._pid = os.getpid()
        self._closed = False
        self.restarts = 0  # workers killed (timeout or failure) so far
        atexit.register(self.close)

    def call(self, fn: Callable[..., Any], *args: Any, timeout_s: float) -> Any:
        """``fn(*args)`` in a worker, within ``timeout_s`` seconds (see module contract)."""
        worker = self._acquire()
        try:
            if not worker.ready:
                self._start(worker)
            worker.send((fn, args))
            status, value = worker.recv(time.monotonic() + timeout_s)
        except CallTimeout:
            self._discard(worker)
            raise CallTimeout(f"{getattr(fn, '__name__', fn)} exceeded {timeout_s:g}s") from None
        except BaseException:
            self._discard(worker)
            raise
        self._release(worker)
        if status != "ok":
            raise CallFailed(value)
        return value

    def _start(self, worker: _Worker) -> None:
        try:
            msg = worker.recv(time.monotonic() + self.start_timeout_s)
        except CallTimeout:
            raise CallFailed(f"worker not ready within {self.start_timeout_s:g}s") from None
        if msg != ("ready", None):
            raise CallFailed(f"worker failed to start: {msg!r}"[:500])
        worker.ready = True

    def close(self) -> None:
        """Kill every idle worker; busy ones are killed when their call returns.

        In a forked child (an inherited ``atexit`` hook) it kills nothing: the workers
        belong to the parent."""
        with self._cond:
            self._closed = True
            if self._pid != os.getpid():
                self._idle, self._live = [], 0
                return
            idle, self._idle = self._idle, []
            self._live -= len(idle)
            self._cond.notify_all()
        for w in idle:
            w.kill()

    def _acquire(self) -> _Worker:
        deadline = time.monotonic() + self.queue_timeout_s
        with self._cond:
            if self._pid != os.getpid():  # forked: the workers belong to the parent
                self._idle, self._live, self._pid = [], 0, os.getpid()
            self._closed = False
            while not self._idle and self._live >= self.workers:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PoolBusy(f"all {self.workers} workers busy for {self.queue_timeout_s:g}s")
                self._cond.wait(left)
            if self._idle:
                return self._idle.pop()
            self._live += 1
        try:
            return _Worker(self.preload, self.memory_limit_bytes, self.stderr)
        except BaseException:
            with self._cond:
                self._live -= 1
                self._cond.notify()
            raise

    def _release(self, worker: _Worker) -> None:
        with self._cond:
            if not self._closed and self._pid == os.getpid():
                self._idle.append(worker)
                self._cond.notify()
                return
            self._live -= 1
        worker.kill()

    def _discard(self, worker: _Worker) -> None:
        worker.kill()
        with self._cond:
            self.restarts += 1
            self._live -= 1
            self._cond.notify()


def _serve(spec: dict) -> None:
    """Worker main loop: preload, report ready, then answer one framed call at a time."""
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)  # stray prints from called code must not corrupt the protocol
    _watch_parent(os.getppid())

    def reply(obj: Any) -> None:
        try:
            data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # an unpicklable result is the call's failure, not the worker's
            data = pickle.dumps(("err", f"unpicklable result: {type(e).__name__}: {e}"[:2000]))
        proto_out.write(_HEADER.pack(len(data)) + data)
        proto_out.flush()

    try:
        import importlib

        for name in spec.get("preload") or ():
            importlib.import_module(name)
        if spec.get("mem"):
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (spec["mem"], spec["mem"]))
    except BaseException as e:
        reply(("failed", f"{type(e).__name__}: {e}"[:2000]))
        return
    reply(("ready", None))
    while True:
        head = proto_in.read(_HEADER.size)
        if len(head) < _HEADER.size:
            return  # parent closed the pipe
        (size,) = _HEADER.unpack(head)
        try:
            fn, args = pickle.loads(proto_in.read(size))
            reply(("ok", fn(*args)))
        except BaseException as e:  # report everything, MemoryError and RecursionError included
            reply(("err", f"{type(e).__name__}: {e}"[:2000]))


def _watch_parent(ppid: int) -> None:
    """Exit when the parent is gone, even in the middle of a long call."""

    def run() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != ppid:
                os._exit(0)

    threading.Thread(target=run, daemon=True, name="parent-watch").start()
