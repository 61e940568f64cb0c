"""infra.timeout_pool: the hard per-call limit the verifier's symbolic checks run under."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from infra.timeout_pool import CallFailed, CallTimeout, PoolBusy, TimeoutPool


@pytest.fixture
def pool():
    p = TimeoutPool(2)
    yield p
    p.close()


def test_result_comes_back_from_another_process(pool):
    assert pool.call(abs, -3, timeout_s=30) == 3
    assert pool.call(os.getpid, timeout_s=30) != os.getpid()


def test_nothing_starts_before_the_first_call():
    p = TimeoutPool(2)
    assert p._live == 0 and not p._idle
    p.close()


def test_an_exception_in_the_call_is_call_failed_and_the_worker_stays(pool):
    pid = pool.call(os.getpid, timeout_s=30)
    with pytest.raises(CallFailed, match="ValueError"):
        pool.call(int, "x", timeout_s=30)
    assert pool.call(os.getpid, timeout_s=30) == pid
    assert pool.restarts == 0


def test_a_call_past_its_limit_is_killed_on_a_thread_and_the_pool_recovers(pool):
    pool.call(abs, 1, timeout_s=30)  # worker started: start-up is not part of the limit
    box = {}

    def run():
        t0 = time.monotonic()
        try:
            pool.call(time.sleep, 60, timeout_s=0.5)
        except CallTimeout as e:
            box["err"] = e
        box["s"] = time.monotonic() - t0

    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    assert isinstance(box.get("err"), CallTimeout)
    assert box["s"] < 0.5 + 1.5
    assert pool.restarts == 1
    assert pool.call(abs, -2, timeout_s=30) == 2


def test_stray_output_in_a_call_does_not_break_the_protocol(pool, capfd):
    assert pool.call(print, "noise " * 10_000, timeout_s=30) is None
    assert pool.call(abs, -5, timeout_s=30) == 5
    out, err = capfd.readouterr()
    assert "noise" not in out + err


def test_all_workers_busy_past_the_queue_limit_is_pool_busy():
    p = TimeoutPool(1, queue_timeout_s=0.3)
    p.call(abs, 1, timeout_s=30)
    with ThreadPoolExecutor(max_workers=1) as ex:
        fut = ex.submit(p.call, time.sleep, 2, timeout_s=10)
        time.sleep(0.2)
        with pytest.raises(PoolBusy):
            p.call(abs, 1, timeout_s=10)
        assert fut.result(timeout=10) is None
    p.close()


def test_concurrent_calls_share_the_workers(pool):
    with ThreadPoolExecutor(max_workers=6) as ex:
        got = list(ex.map(lambda i: pool.call(abs, -i, timeout_s=30), range(30)))
    assert got == list(range(30))
    assert pool._live <= 2


def test_memory_limit_fails_the_call_not_the_machine():
    p = TimeoutPool(1, memory_limit_bytes=1 << 30)
    with pytest.raises(CallFailed, match="MemoryError"):
        p.call(bytearray, 4 << 30, timeout_s=30)
    assert p.call(abs, -1, timeout_s=30) == 1
    p.close()


def test_a_preload_that_fails_is_call_failed():
    p = TimeoutPool(1, preload=("no_such_module_here",))
    with pytest.raises(CallFailed, match="start"):
        p.call(abs, 1, timeout_s=30)
    p.close()


def test_close_kills_the_workers(pool):
    pid = pool.call(os.getpid, timeout_s=30)
    pool.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("worker still alive after close()")


def test_a_forked_child_does_not_kill_the_parents_workers(pool):
    pid = pool.call(os.getpid, timeout_s=30)
    child = os.fork()
    if child == 0:  # the child's close() (as its inherited atexit hook would) must not kill
        try:
            pool.close()
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    assert pool.call(os.getpid, timeout_s=30) == pid
