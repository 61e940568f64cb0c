"""Process lifetime of a driver (``sphere run``, ``rerun``, ``sweep``, ``evolve``): nothing it
started outlives it, and SIGTERM or Ctrl-C stops it within seconds with a resume hint.

What a driver starts: Prefect's ephemeral API server (a ``uvicorn`` subprocess Prefect launches
on first use), Ray's daemons (gcs_server, raylet, dashboard/runtime-env agents, log monitor)
and workers (the engine actors), and the answer verifier's worker processes
(``infra.timeout_pool``). Measured on Ray 2.60 / Prefect 3.8.8 after ``kill -9`` of the
driver: the Prefect server lives on forever under PID 1 (Prefect only stops it from an
``atexit`` hook), and Ray's dashboard and runtime-env agents notice the raylet is gone but
then hang publishing that to the dead GCS, for a minute or more. gcs_server and raylet die
(Ray ties them to the driver's thread), and the verifier's workers exit within a second (they
watch their parent).

Design, and why:

- **Tag, then reap.** ``guard()`` sets ``SPHERE_LIFETIME_OWNER=<pid>:<start time>`` in the
  driver's environment before anything starts; every process the driver starts afterwards,
  and every process those start (raylet's workers and agents, the uvicorn server), inherits
  it. A small reaper process (this file run as a script, stdlib only, in its own session so
  a process-group kill or a terminal's Ctrl-C does not reach it) waits for the driver to exit
  (a pidfd: woken at once, even by ``kill -9``) and then stops every process that still
  carries the tag, and every descendant of the driver it saw while the driver lived (it looks
  twice a second, a few ms each): SIGTERM, then SIGKILL after a second. The second set is
  needed because a process that rewrites its title (Ray's agents, via setproctitle) loses its
  readable environment, and its parent (raylet) dies first and leaves it under PID 1. This
  covers whatever a backend or a library starts, not only the processes known today, without
  changing how Prefect or Ray launch them. Starting the Prefect server ourselves with ``PR_SET_PDEATHSIG`` was the
  alternative: it needs a copy of Prefect's private launch arguments, ties the server to one
  thread of the driver, and does nothing for Ray's agents; a per-data-root shared server
  would be a process that outlives the run by design.
- **Stale ones at start-up.** The tag names its owner by pid *and* start time (pids are
  reused), so ``reap_stale()`` (called by ``guard()``) can tell which tagged processes lost
  their driver when the reaper itself did not get to them (it was killed too), and stops them. It also
  stops ephemeral Prefect servers left by older versions (untagged): an orphan (parent PID 1)
  ``uvicorn ... prefect.server.api.server:create_app`` started with
  ``PREFECT__SERVER_EPHEMERAL=1`` and this process's ``PREFECT_HOME``. A pid is signalled
  through a pidfd after its identity was checked, so a recycled pid is never hit.
- **Signals.** Prefect's flow engine swaps its own SIGTERM handler in while a flow runs and
  only hands the signal on after it has unwound, and unwinding waits for the shard tasks in
  flight (61 s measured). So ``guard()`` does not rely on being the handler: it registers a
  ``signal.set_wakeup_fd`` pipe, which the interpreter writes the signal number to at
  delivery whichever Python handler is installed, and a watcher thread reacts at once: it
  prints the hint and gives the run ``grace_s`` seconds to unwind (Prefect marks the flow
  runs crashed in that time), then ends the process with ``os._exit(128 + signal)``; the
  reaper then stops the children. A run that unwinds sooner exits with the same code.
  Finished shards are committed atomically, so whatever was cut off is redone on resume.

With ``PREFECT_API_URL`` set by the user nothing here starts a server; the tag and the reaper
then simply find no Prefect process to stop. Linux only (``/proc``, pidfd); elsewhere the
reaping is skipped and only the signal handling remains. ``guard()`` may be entered more than
once per process (the CLI commands under a test runner): one reaper per process, the signal
set-up is undone on exit.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

OWNER_ENV = "SPHERE_LIFETIME_OWNER"
STOP_GRACE_S = 3.0  # after SIGTERM/SIGINT, time the run gets to unwind before the process ends
TERM_GRACE_S = 1.0  # between the reaper's SIGTERM and SIGKILL
_PROC = Path("/proc")
_SERVER_MARKS = ("uvicorn", "prefect.server.api.server:create_app")

_reaper: tuple[int, subprocess.Popen] | None = None  # (pid it watches, reaper)
_reaper_lock = threading.Lock()


class Interrupted(KeyboardInterrupt):
    """SIGTERM arrived while no Prefect flow held the signal."""


# --- /proc helpers -----------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, else None."""
    try:
        raw = (_PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2:].split()  # after "pid (comm) "
    if fields[0] == b"Z":
        return None  # a zombie is gone for our purposes
    return int(fields[1]), int(fields[19])


def identity(pid: int | None = None) -> str | None:
    """``"<pid>:<start time>"``: names one process across pid reuse (None: not on Linux)."""
    pid = os.getpid() if pid is None else pid
    st = _stat(pid)
    return f"{pid}:{st[1]}" if st else None


def alive(ident: str) -> bool:
    pid, _, start = ident.partition(":")
    try:
        st = _stat(int(pid))
    except ValueError:
        return False
    return st is not None and str(st[1]) == start


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = (_PROC / str(pid) / "environ").read_bytes()  # readable for our own user's processes
    except OSError:
        return {}
    out = {}
    for item in raw.split(b"\0"):
        k, sep, v = item.partition(b"=")
        if sep:
            out[k.decode(errors="replace")] = v.decode(errors="replace")
    return out


def _cmdline(pid: int) -> str:
    try:
        return (_PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pids() -> list[int]:
    try:
        return [int(p.name) for p in _PROC.iterdir() if p.name.isdigit() and int(p.name) != os.getpid()]
    except OSError:
        return []


def owned_by(owner: str) -> list[int]:
    """Live processes carrying ``owner``'s tag (the owner itself never does: it set the tag
    after it started)."""
    return [p for p in _pids() if _environ(p).get(OWNER_ENV) == owner]


def _stale_pids(prefect_home: str | None) -> list[int]:
    out = []
    for pid in _pids():
        env = _environ(pid)
        owner = env.get(OWNER_ENV)
        if owner:
            if not alive(owner):
                out.append(pid)
        elif (prefect_home and env.get("PREFECT__SERVER_EPHEMERAL") == "1" and env.get("PREFECT_HOME")
              and os.path.realpath(os.path.expanduser(env.get("PREFECT_HOME", ""))) == prefect_home
              and all(m in _cmdline(pid) for m in _SERVER_MARKS) and (_stat(pid) or (0,))[0] == 1):
            out.append(pid)
    return out


def _send(pid: int, ident: str, sig: int) -> None:
    """Signal ``pid`` if it still is the process ``ident`` names, through a pidfd opened
    before the check (so a pid recycled in between is never signalled)."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    try:
        if alive(ident):
            if fd is not None:
                signal.pidfd_send_signal(fd, sig)
            else:
                os.kill(pid, sig)
    except OSError:
        pass  # gone already
    finally:
        if fd is not None:
            os.close(fd)


def terminate(find: Callable[[], list[int]], term_grace_s: float = TERM_GRACE_S, rounds: int = 3) -> list[int]:
    """Stop every process ``find()`` returns: SIGTERM, then SIGKILL whoever is left after
    ``term_grace_s``; again (up to ``rounds`` times) for processes that appeared meanwhile.
    Returns the pids signalled."""
    hit: list[int] = []
    for _ in range(rounds):
        targets = {p: i for p in find() if (i := identity(p))}
        if not targets:
            break
        for p, i in targets.items():
            _send(p, i, signal.SIGTERM)
        deadline = time.monotonic() + term_grace_s
        while time.monotonic() < deadline and any(alive(i) for i in targets.values()):
            time.sleep(0.05)
        for p, i in targets.items():
            _send(p, i, signal.SIGKILL)
        hit += targets
        time.sleep(0.1)
    return hit


def reap_stale(prefect_home: str | None = None) -> list[int]:
    """Stop what dead drivers left behind (see the module docstring); returns the pids."""
    home = prefect_home or os.environ.get("PREFECT_HOME")
    home = os.path.realpath(os.path.expanduser(home)) if home else None
    return terminate(lambda: _stale_pids(home), rounds=2)


# --- the reaper ----------------------------------------------------------------------------


def start_reaper() -> str | None:
    """Tag this process's future children and start its reaper (once per process).
    Returns the tag, or None where ``/proc`` is missing."""
    global _reaper
    owner = identity()
    if owner is None:
        return None
    with _reaper_lock:
        if _reaper is not None and _reaper[0] == os.getpid() and _reaper[1].poll() is None:
            return owner
        env = {k: v for k, v in os.environ.items() if k != OWNER_ENV}  # the reaper is no target
        proc = subprocess.Popen([sys.executable, "-I", str(Path(__file__).resolve()), owner], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                close_fds=True, start_new_session=True)
        _reaper = (os.getpid(), proc)
        os.environ[OWNER_ENV] = owner
        return owner


def descendants(pid: int) -> dict[int, str]:
    """Every live descendant of ``pid``: {pid: identity}."""
    kids: dict[int, list[int]] = {}
    for p in _pids():
        st = _stat(p)
        if st:
            kids.setdefault(st[0], []).append(p)
    out: dict[int, str] = {}
    todo = list(kids.get(pid, ()))
    while todo:
        p = todo.pop()
        ident = identity(p)
        if ident and p not in out:
            out[p] = ident
            todo += kids.get(p, ())
    return out


def _reaper_main(owner: str, poll_s: float = 0.5) -> None:
    """Watch ``owner``; once it is gone, stop what it left: every process with its tag, and
    every descendant seen while it lived (a process that rewrites its title, as Ray's agents
    do, loses its readable environment, so the tag alone does not find it; and by then its
    parent may have died, leaving it under PID 1)."""
    for s in (signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    pid = int(owner.partition(":")[0])
    try:
        fd = os.pidfd_open(pid)  # readable once the process has exited
    except (AttributeError, OSError):
        fd = None
    seen: dict[int, str] = {}
    while alive(owner):
        seen = {p: i for p, i in seen.items() if alive(i)}
        seen.update(descendants(pid))
        if fd is not None:
            select.select([fd], [], [], poll_s)
        else:
            time.sleep(poll_s)
    terminate(lambda: sorted(set(owned_by(owner)) | {p for p, i in seen.items() if alive(i)}))


# --- signals -------------------------------------------------------------------------------


class _Stopper:
    """The SIGTERM/SIGINT reaction of one ``guard()`` (see the module docstring)."""

    def __init__(self, hint: str, notify: Callable[[str], None] | None, grace_s: float) -> None:
        self.hint, self.notify, self.grace_s = hint, notify, grace_s
        self.signum: int | None = None
        self._lock = threading.Lock()
        self._said = threading.Event()
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        self._closing = False
        self._busy = False
        self._old_wakeup = -1
        self._old_term = None
        self._thread = threading.Thread(target=self._watch, name="sphere-signal-watch", daemon=True)

    def install(self) -> None:
        self._old_term = signal.signal(signal.SIGTERM, self._on_sigterm)
        self._old_wakeup = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        self._thread.start()

    def uninstall(self) -> None:
        current = signal.set_wakeup_fd(self._old_wakeup)
        if current != self._w:  # someone replaced ours meanwhile: leave theirs in place
            signal.set_wakeup_fd(current)
        signal.signal(signal.SIGTERM, self._old_term if self._old_term is not None else signal.SIG_DFL)
        self._closing = True
        try:
            os.write(self._w, b"\0")
        except OSError:
            pass
        self._thread.join(timeout=5)
        for fd in (self._r, self._w):
            os.close(fd)

    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGTERM)

    @staticmethod
    def _on_sigterm(signum, frame) -> None:
        raise Interrupted(f"signal {signum}")

    def _watch(self) -> None:
        while True:
            try:
                select.select([self._r], [], [])
                self._busy = True  # set before the read empties the pipe: see settle()
                data = os.read(self._r, 64)
            except OSError:
                return
            if self._closing or not data:
                return
            if signal.SIGTERM in data or signal.SIGINT in data:
                self.stop(signal.SIGTERM if signal.SIGTERM in data else signal.SIGINT)
            self._busy = False

    def settle(self, timeout_s: float = 1.0) -> None:
        """Wait until the watcher has handled every signal delivered so far (the interpreter
        writes to the pipe before any Python handler runs)."""
        deadline = time.monotonic() + timeout_s
        while (self._busy or select.select([self._r], [], [], 0)[0]) and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self, signum: int) -> None:
        """React to ``signum`` (once): the hint now, the end of the process after the grace."""
        with self._lock:
            if self.signum is not None:
                return
            self.signum = signum
        threading.Thread(target=self._deadline, name="sphere-stop-deadline", daemon=True).start()
        self._say()

    def _say(self) -> None:
        text = f"interrupted ({signal.Signals(self.signum).name}); {self.hint}"
        try:
            if self.notify:
                self.notify(text)
            else:
                os.write(2, (text + "\n").encode())
        except Exception:
            os.write(2, (text + "\n").encode())
        self._said.set()

    def _deadline(self) -> None:
        time.sleep(self.grace_s)
        if not self._said.is_set():  # the console was stuck: say it plainly
            os.write(2, f"\ninterrupted; {self.hint}\n".encode())
        if os.isatty(2):
            os.write(2, b"\x1b[?25h")  # a progress display hides the cursor; give it back
        os._exit(self.exit_code())


@contextlib.contextmanager
def guard(hint: str, *, notify: Callable[[str], None] | None = None, grace_s: float = STOP_GRACE_S) -> Iterator[None]:
    """Run a driver command: stale leftovers are stopped first, everything started inside is
    stopped when the process ends however it ends, and SIGTERM/SIGINT print ``hint`` at once
    and end the process within ``grace_s`` seconds with code 143/130.

    ``notify(text)`` prints the interruption message (from a watcher thread); default stderr.
    """
    reap_stale()
    start_reaper()
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are the main thread's; the reaping above still applies
        return
    stopper = _Stopper(hint, notify, grace_s)
    stopper.install()
    try:
        yield
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):  # the handler may have run before the watcher did
            stopper.stop(signal.SIGTERM if isinstance(e, Interrupted) else signal.SIGINT)
        stopper.settle()  # e.g. Prefect's TerminationSignal: the watcher may not have seen it yet
        if stopper.signum is not None:
            stopper._said.wait(1.0)
            raise SystemExit(stopper.exit_code()) from None
        raise
    finally:
        stopper.uninstall()


if __name__ == "__main__":
    _reaper_main(sys.argv[1])
