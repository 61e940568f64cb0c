"""Issue 10, bug 3: every symbolic check is bounded in time on any thread.

math-verify's own timeouts use SIGALRM and only work on the main thread; Prefect runs
tasks on worker threads, so a pathological model output used to hang a shard.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from tasks.answers import Verdict, is_equivalent, verify_answer, warm_symbolic_pool

# sympy evaluates this sum exactly: minutes of work for a 26-character answer.
SLOW = "\\sum_{k=1}^{2000} k^{k}"
LIMIT_S = 1.0
SLACK_S = 2.0


def _timed(fn):
    t0 = time.monotonic()
    out = fn()
    return out, time.monotonic() - t0


def test_pathological_check_is_bounded_in_a_thread():
    warm_symbolic_pool()  # worker start-up is not part of a check's limit
    box = {}

    def run():
        box["out"] = _timed(lambda: verify_answer(SLOW, "1", timeout_s=LIMIT_S))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(LIMIT_S + SLACK_S + 5)
    assert not t.is_alive(), "the check did not return"
    (result, elapsed) = box["out"]
    assert result.verdict is Verdict.unknown
    assert "time" in result.reason
    assert elapsed < LIMIT_S + SLACK_S


def test_pathological_checks_in_a_thread_pool_and_the_pool_recovers():
    warm_symbolic_pool()
    with ThreadPoolExecutor(max_workers=2) as ex:
        futs = [ex.submit(_timed, lambda: verify_answer(SLOW, "1", timeout_s=LIMIT_S)) for _ in range(2)]
        results = [f.result(timeout=3 * (LIMIT_S + SLACK_S)) for f in futs]
    for result, elapsed in results:
        assert result.verdict is Verdict.unknown
        assert elapsed < 2 * (LIMIT_S + SLACK_S)  # two workers; start-up of replacements allowed
    # the killed workers are replaced: a normal symbolic check still works from a thread
    with ThreadPoolExecutor(max_workers=1) as ex:
        assert ex.submit(is_equivalent, "\\frac{\\sqrt{8}}{2}", "\\sqrt{2}").result(timeout=60)


def test_no_timeout_warning_reaches_the_terminal(capfd):
    with ThreadPoolExecutor(max_workers=1) as ex:
        assert ex.submit(is_equivalent, "x^2+2x+1", "(x+1)^2").result(timeout=60)
    out, err = capfd.readouterr()
    assert "Timeout is disabled" not in out + err
