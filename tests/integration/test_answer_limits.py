"""A pathological answer check is bounded in time where the factory really runs checks:
inside a Prefect task (a worker thread) and inside a Ray actor (another process)."""

import time

SLOW = "\\sum_{k=1}^{2000} k^{k}"  # sympy evaluates it exactly: minutes of work
LIMIT_S = 1.0
SLACK_S = 4.0  # worker start-up on a loaded 2-core machine


def _check() -> tuple[str, str, float]:
    from tasks.answers import verify_answer, warm_symbolic_pool

    warm_symbolic_pool()
    t = time.monotonic()
    v = verify_answer(SLOW, "1", timeout_s=LIMIT_S)
    return v.verdict.value, v.reason, time.monotonic() - t


def test_a_pathological_check_is_bounded_inside_a_prefect_task(prefect_api):
    from prefect import flow, task

    check = task(_check, name="pathological-check")

    @flow
    def run_check():
        return check.submit().result()

    verdict, reason, seconds = run_check()
    assert verdict == "unknown" and "time" in reason and seconds < LIMIT_S + SLACK_S


def test_a_pathological_check_is_bounded_inside_a_ray_actor(ray_local):
    import ray

    @ray.remote(num_cpus=0)
    class Checker:
        def run(self):
            return _check()

    verdict, reason, seconds = ray.get(Checker.remote().run.remote(), timeout=120)
    assert verdict == "unknown" and "time" in reason and seconds < LIMIT_S + SLACK_S
