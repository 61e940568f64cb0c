"""The Ray engine pool: a fixed number of long-lived actors, each holding one backend.

The backend is built once per actor, on the worker (``BackendActor.__init__``), from a
cheap picklable config. ``EnginePool.generate(requests)`` splits a batch across the
actors, keeps result order, and handles infrastructure failures: an actor that dies or
does not answer within ``batch_timeout_s`` is replaced by a fresh one and its chunk is
resent, up to ``max_retries`` times; then ``BackendError`` is raised. A request that is
malformed (``InvalidRequest``) is not retried. Thread-safe: several Prefect shard tasks
can share one pool.
"""

from __future__ import annotations

import logging
import os
import threading

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from infra.backends.base import BackendError, BackendTimeout, BackendUnavailable, GenRequest, GenResult, InvalidRequest
from infra.config import PoolConfig

log = logging.getLogger(__name__)


_RAY_LOCK = threading.Lock()


def ensure_ray(cfg: PoolConfig) -> None:
    """Start (or join) Ray once per process (thread-safe)."""
    with _RAY_LOCK:
        if not ray.is_initialized():
            _init_ray(cfg)


def _init_ray(cfg: PoolConfig) -> None:
    if cfg.address:
        ray.init(address=cfg.address, ignore_reinit_error=True, log_to_driver=False)
    else:
        need = cfg.actors * cfg.num_cpus
        ray.init(
            num_cpus=max(os.cpu_count() or 1, int(need + 0.999)),
            num_gpus=None if cfg.num_gpus else 0,
            include_dashboard=False,
            ignore_reinit_error=True,
            log_to_driver=False,
            configure_logging=False,
        )


def backend_json_actors(backend_json: dict, pool_cfg: PoolConfig) -> int:
    """Actors for this backend: the backend's own ``actors`` (vllm) or the pool's."""
    return backend_json.get("actors") or pool_cfg.actors


def actor_options(backend_json: dict, pool_cfg: PoolConfig) -> dict:
    """Ray options of one backend actor.

    A vLLM engine gets ``num_gpus`` = its tensor-parallel size: Ray puts all of them on one
    node and sets CUDA_VISIBLE_DEVICES, and vLLM's own multiprocessing executor runs the
    tensor-parallel workers inside the actor (no Ray executor nested in a Ray actor). With
    tensor parallelism the GPUs are first reserved as a STRICT_PACK placement group (one
    node, all or nothing), so a pool that does not fit fails at start-up instead of
    holding half its GPUs. ``pool.runtime_env`` gives the actors the GPU workers' own
    environment (pip/uv set or container image).

    On a cluster, ``pool.resources`` (custom resources, e.g. ``{"sphere_worker": 1}``) keeps
    the actors on the nodes that declare them, and ``pool.scheduling: spread`` spreads them
    over those nodes (Ray's SPREAD strategy); a replacement for an actor lost with its node
    goes through the same options, so it lands on any surviving node with room. A tensor
    parallel engine keeps its placement group (its bundle carries the custom resources).
    """
    opts: dict = {"num_cpus": pool_cfg.num_cpus, "num_gpus": pool_cfg.num_gpus}
    custom = dict(pool_cfg.resources or {})
    if custom:
        opts["resources"] = custom
    if pool_cfg.scheduling == "spread":
        opts["scheduling_strategy"] = "SPREAD"
    if backend_json.get("kind") == "vllm":
        tp = int(backend_json.get("tensor_parallel_size") or 1)
        gpus = backend_json.get("gpus_per_engine")
        opts["num_gpus"] = tp if gpus is None else gpus
        if tp > 1 and opts["num_gpus"] >= tp:
            from ray.util.placement_group import placement_group
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            bundle = {"GPU": opts["num_gpus"], "CPU": max(pool_cfg.num_cpus, 1), **custom}
            pg = placement_group([bundle], strategy="STRICT_PACK")
            opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)
    if pool_cfg.runtime_env:
        opts["runtime_env"] = pool_cfg.runtime_env
    return opts


@ray.remote(max_restarts=0)
class BackendActor:
    def __init__(self, backend_cfg: dict):
        from infra.env import apply_offline_env

        apply_offline_env()
        from pydantic import TypeAdapter

        from infra.backends import build_backend
        from infra.config import BackendConfig

        self.backend = build_backend(TypeAdapter(BackendConfig).validate_python(backend_cfg))

    def info(self) -> dict:
        return {"model": self.backend.model_name, "reproducible": self.backend.reproducible, "pid": os.getpid()}

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        return self.backend.generate(requests)

    def reward(self, texts: list[str]) -> list[list[float]]:
        """Per-token rewards from a reward/pooling model (vllm backend with ``task: reward``)."""
        if not hasattr(self.backend, "reward"):
            raise InvalidRequest(f"{self.backend.model_name} does not serve rewards")
        return self.backend.reward(texts)

    def crash(self) -> None:
        """Kill this worker process (used by tests to prove the pool recovers)."""
        os._exit(1)


def _unwrap(err: RayTaskError) -> BaseException:
    cause = err.cause if hasattr(err, "cause") else None
    return cause if cause is not None else err


class EnginePool:
    def __init__(self, backend_cfg, pool_cfg: PoolConfig):
        ensure_ray(pool_cfg)
        self.backend_json = backend_cfg.model_dump(mode="json")
        self.cfg = pool_cfg
        self._lock = threading.Lock()
        self._pgs: dict = {}
        self.actors = [self._spawn() for _ in range(backend_json_actors(self.backend_json, pool_cfg))]
        try:
            infos = self._start(self.actors)
        except BackendError:
            self.close()  # actors that never started must not keep their CPUs/GPUs
            raise
        self.model_name = infos[0]["model"]
        self.reproducible = infos[0]["reproducible"]

    def _spawn(self):
        opts = actor_options(self.backend_json, self.cfg)
        actor = BackendActor.options(**opts).remote(self.backend_json)
        pg = getattr(opts.get("scheduling_strategy"), "placement_group", None)
        if pg is not None:  # the actor's GPU reservation, released with it ("SPREAD" has none)
            self._pgs[actor] = pg
        return actor

    def _kill(self, actor) -> None:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # already dead
            pass
        pg = self._pgs.pop(actor, None)
        if pg is not None:
            from ray.util.placement_group import remove_placement_group

            try:
                remove_placement_group(pg)
            except Exception:
                pass

    def _start(self, actors) -> list[dict]:
        """Wait for actors to build their backends; fail fast with the backend's message."""
        try:
            return ray.get([a.info.remote() for a in actors], timeout=self.cfg.startup_timeout_s)
        except RayActorError as e:
            raise BackendUnavailable(f"backend actor failed to start: {e}") from None
        except GetTimeoutError:
            raise BackendUnavailable(
                f"backend actors not ready within {self.cfg.startup_timeout_s}s "
                f"(are {self.cfg.num_cpus} CPUs / {self.cfg.num_gpus} GPUs per actor free in the Ray cluster?)"
            ) from None

    def _replace(self, i: int, old) -> None:
        with self._lock:
            if self.actors[i] is old:
                self._kill(old)
                self.actors[i] = self._spawn()
                self._start([self.actors[i]])

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        """Generation, split across the actors (order kept, failed chunks resent)."""
        return self._call("generate", requests)

    def reward(self, texts: list[str]) -> list[list[float]]:
        """Per-token rewards of ``texts`` from a reward model pool (same retry path)."""
        return self._call("reward", texts)

    def _call(self, method: str, requests: list) -> list:
        if not requests:
            return []
        k = len(self.actors)
        size = -(-len(requests) // k)
        chunks = [(i, requests[i * size : (i + 1) * size]) for i in range(k) if requests[i * size : (i + 1) * size]]
        out: dict[int, list[GenResult]] = {}
        attempts = {i: 0 for i, _ in chunks}
        pending = {i: (self.actors[i], getattr(self.actors[i], method).remote(c)) for i, c in chunks}
        while pending:
            i, (actor, ref) = next(iter(pending.items()))
            try:
                out[i] = ray.get(ref, timeout=self.cfg.batch_timeout_s)
                del pending[i]
                continue
            except RayTaskError as e:
                cause = _unwrap(e)
                if isinstance(cause, InvalidRequest):
                    raise cause from None
                if not isinstance(cause, BackendError):
                    raise BackendError(f"backend raised {type(cause).__name__}: {cause}") from None
                reason: Exception = cause
            except RayActorError as e:
                reason = BackendUnavailable(f"actor died: {e}")
            except GetTimeoutError:
                reason = BackendTimeout(f"no answer within {self.cfg.batch_timeout_s}s")
            attempts[i] += 1
            if attempts[i] > self.cfg.max_retries:
                raise BackendError(f"chunk failed {attempts[i]} times; last: {reason}") from None
            log.warning("engine pool: %s; retrying chunk %d on a fresh actor (attempt %d)", reason, i, attempts[i])
            self._replace(i, actor)
            chunk = dict(chunks)[i]
            pending[i] = (self.actors[i], getattr(self.actors[i], method).remote(chunk))
        return [r for i, _ in chunks for r in out[i]]

    def close(self) -> None:
        for a in self.actors:
            self._kill(a)
        self.actors = []


_POOLS: dict[str, EnginePool] = {}
_POOLS_LOCK = threading.Lock()


def _key(backend_cfg, pool_cfg: PoolConfig) -> str:
    import json

    return json.dumps([backend_cfg.model_dump(mode="json"), pool_cfg.model_dump(mode="json")], sort_keys=True)


def get_pool(backend_cfg, pool_cfg: PoolConfig) -> EnginePool:
    """The process's pool for this (backend, pool) config, built on first use."""
    key = _key(backend_cfg, pool_cfg)
    with _POOLS_LOCK:
        if key not in _POOLS:
            _POOLS[key] = EnginePool(backend_cfg, pool_cfg)
        return _POOLS[key]


def prewarm(backend_cfg, pool_cfg: PoolConfig) -> threading.Thread:
    """Create the pool's actors from a background thread (they build their engines while
    the driver does other work). Call ``ensure_ray`` on the main thread first: Ray's daemons
    are killed when the thread that started them exits. Errors are not lost: the stage's own
    ``get_pool`` raises them again."""

    if not ray.is_initialized():
        raise RuntimeError("call ensure_ray() on the main thread before prewarm()")

    def warm() -> None:
        try:
            get_pool(backend_cfg, pool_cfg)
        except Exception as e:  # surfaced again by the stage's own get_pool
            log.warning("engine pool prewarm failed: %s", e)

    t = threading.Thread(target=warm, name="sphere-pool-prewarm", daemon=True)
    t.start()
    _PREWARMING.append(t)
    return t


_PREWARMING: list[threading.Thread] = []


def close_pool(backend_cfg, pool_cfg: PoolConfig) -> None:
    """Close the process's pool for this (backend, pool) config, if there is one (other
    pools, e.g. one prewarmed for a later stage, are left alone)."""
    _join_prewarms()
    with _POOLS_LOCK:
        pool = _POOLS.pop(_key(backend_cfg, pool_cfg), None)
    if pool is not None:
        pool.close()


def _join_prewarms() -> None:
    while _PREWARMING:
        _PREWARMING.pop().join()


def close_pools() -> None:
    """Close every pool of the process. A prewarm still building a pool is waited for first,
    so no pool built in the background outlives the close (and holds the CPUs/GPUs)."""
    _join_prewarms()
    with _POOLS_LOCK:
        for p in _POOLS.values():
            p.close()
        _POOLS.clear()
