"""What a model stage needs from the run, as one value: the backend's ``generate``, the step
scorer, the search settings and what every chain row records about how it was made.

Stages take an ``Engine`` instead of the whole run config, so their pure functions can be
called with any generator (a test's, a Ray pool's) and only see their own settings.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from infra.config import SearchConfig
from tasks.scorers import StepScorer
from tasks.search import Chain, Generate, SearchProblem, pruned_search


@dataclass(frozen=True)
class Engine:
    generate: Generate
    scorer: StepScorer
    search: SearchConfig
    seed: int  # the run's master seed (recorded on rows; stages offset it for their own streams)
    unknown_score: float
    model: str
    run_id: str
    config_hash: str  # hash of the config values the stage's output depends on

    def with_search(self, search: SearchConfig) -> Engine:
        return replace(self, search=search)

    def search_chains(self, problems: list[SearchProblem], seed_offset: int = 0) -> list[Chain]:
        """MAX and MIN chains for ``problems`` (``tasks.search.pruned_search``), in input order."""
        return pruned_search(problems, self.generate, self.scorer, self.search, seed=self.seed + seed_offset,
                             unknown_score=self.unknown_score)
