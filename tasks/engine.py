"""What a model stage needs from the run, as one value: the backend's ``generate``, the step
scorer, the search settings and what every chain row records about how it was made.

Stages take an ``Engine`` instead of the whole run config, so their pure functions can be
called with any generator (a test's, a Ray pool's) and only see their own settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from infra.backends.base import BackendError
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

    def search_chains(self, problems: list[SearchProblem], seed_offset: int = 0) -> list[Chain]:
        """MAX and MIN chains for ``problems`` (``tasks.search.pruned_search``), in input order.

        All problems are searched together (one batch per depth). When that raises anything
        but a ``BackendError`` (infrastructure: re-raised, the shard is retried), each problem
        is searched alone: a problem whose search still raises gets one chain with
        ``finish="error"`` and ``error`` = the exception's type and message, and the others
        keep their chains. Search seeds depend only on (seed, problem, prefix), so a problem
        searched alone gets the chains it would have got in the batch."""
        try:
            return self._search(problems, seed_offset)
        except BackendError:
            raise
        except Exception:  # noqa: BLE001 - a row-level failure: isolate the problem(s) that cause it
            out: list[Chain] = []
            for p in problems:
                try:
                    out += self._search([p], seed_offset)
                except BackendError:
                    raise
                except Exception as e:  # noqa: BLE001
                    out.append(Chain(p.problem_id, "max", list(p.start_steps), list(p.start_scores), list(p.start_scores),
                                     finish="error", error=f"{type(e).__name__}: {e}"[:2000]))
            return out

    def _search(self, problems: list[SearchProblem], seed_offset: int) -> list[Chain]:
        return pruned_search(problems, self.generate, self.scorer, self.search, seed=self.seed + seed_offset,
                             unknown_score=self.unknown_score)
