"""``sphere evolve`` shows progress as ``sphere run`` does (issue 21.5): the rounds as they
start, and each round's stages through the same reporter (``infra.progress``)."""

from types import SimpleNamespace

from flows import evolve
from infra import progress
from tests.conftest import ROOT


def test_an_evolve_reports_each_round_as_it_starts_and_the_end(monkeypatch, tmp_path):
    seen = []

    def fake_round(run_config, evolve_id, r, policy, data_root):  # a round's run reports its stages like this
        progress.report("generation", 1, 2)
        return {"round": r, "run_id": f"{evolve_id}-r{r}", "evals": [], "next_policy": policy}

    monkeypatch.setattr(evolve, "evolve_round", SimpleNamespace(with_options=lambda **kw: fake_round))
    progress.install(lambda stage, done, total: seen.append((stage, done, total)))
    try:
        record = evolve.sphere_evolve(config_path=str(ROOT / "configs" / "quickstart.yaml"), rounds=2, evolve_id="ev",
                                      data_root=str(tmp_path))
    finally:
        progress.install(None)
    assert seen == [("round", 0, 2), ("generation", 1, 2), ("round", 1, 2), ("generation", 1, 2), ("round", 2, 2)]
    assert [r["round"] for r in record["rounds"]] == [0, 1] and record["comparisons"] == []
