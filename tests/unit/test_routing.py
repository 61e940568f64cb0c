import pytest

from infra.schemas import from_rows
from tasks.routing import generation_pairs, route_problems


def chains_for(outcomes):
    rows = []
    for pid, (mx, mn) in outcomes.items():
        for branch, ok in (("max", mx), ("min", mn)):
            rows.append({"run_id": "r", "chain_id": f"{pid}-{branch}", "problem_id": pid, "stage": "generation",
                         "branch": branch, "correct": ok, "prompt": f"Q {pid}", "text": f"{pid} {branch} {ok}",
                         "step_scores": [1.0 if ok else 0.0]})
    return from_rows(rows, "chains")


@pytest.mark.parametrize("mixed, route", [("drop", "mixed_drop"), ("swap", "mixed_swap")])
def test_every_outcome_routes_and_pairs_are_wired(mixed, route):
    ch = chains_for({"a": (True, False), "b": (False, False), "c": (True, True), "d": (False, True)})
    routes = route_problems(ch, ["a", "b", "c", "d", "e"], run_id="r", mixed_outcome=mixed)
    assert routes.column("route").to_pylist() == ["generation_pair", "self_correction", "diversity_induction", route, "incomplete"]
    pairs = generation_pairs(ch, routes, run_id="r").to_pylist()
    got = [(p["problem_id"], p["chosen_chain_id"], p["rejected_chain_id"]) for p in pairs]
    want = [("a", "a-max", "a-min")] + ([("d", "d-min", "d-max")] if mixed == "swap" else [])
    assert got == want
    assert all(p["margin"] == 1.0 and p["prompt"] == f"Q {p['problem_id']}" for p in pairs)
