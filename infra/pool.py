"""The Ray engine pool: a fixed number of long-lived actors, each holding one backend.

The backend is built once per actor, on the worker (``BackendActor.__init__``), from a
cheap picklable config. ``EnginePool.generate(requests)`` splits a batch across the
actors, keeps result order, and handles infrastructure failures: an actor that dies or
does not answer within ``batch_timeout_s`` is replaced by a fresh one and its chunk is
resent, up to ``max_retries`` times; then ``BackendError`` is raised. A request that is
malformed (``InvalidRequest``) is not retried, nor is a backend's ``DeadlineExceeded``. One
call as a whole (every wait, retry and respawn) is bounded by ``call_deadline_s``: past it
the call raises ``DeadlineExceeded`` naming the model, and an actor still on the chunk is
replaced. Thread-safe: several Prefect shard tasks
can share one pool. A caller that passes ``cost=`` (an ``infra.cost.Cost``, one per stage
shard) gets each answered call's tokens, requests and engine-seconds (each chunk timed on
the actor that served it) added to it; the pool itself does not know which stage called.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from infra.backends.base import (BackendError, BackendTimeout, BackendUnavailable, DeadlineExceeded, GenRequest, GenResult,
                                 InvalidRequest)
from infra.config import PoolConfig
from infra.cost import Cost
from infra.worker_env import runtime_env

log = logging.getLogger(__name__)


_RAY_LOCK = threading.Lock()


def ensure_ray(cfg: PoolConfig, need: dict[str, float] | None = None) -> None:
    """Start (or join) Ray once per process (thread-safe). A local Ray declares at least the
    CPUs of ``need`` (the run's pools together, ``total_need``; default one pool), so every
    pool of the run fits at once; a cluster (``pool.address``) has what it has."""
    with _RAY_LOCK:
        if not ray.is_initialized():
            _init_ray(cfg, need)


def _init_ray(cfg: PoolConfig, need: dict[str, float] | None = None) -> None:
    if cfg.address:
        ray.init(address=cfg.address, ignore_reinit_error=True, log_to_driver=False)
    else:
        cpus = (need or {}).get("CPU", cfg.actors * cfg.num_cpus)
        ray.init(
            num_cpus=max(os.cpu_count() or 1, int(cpus + 0.999)),
            num_gpus=None if cfg.num_gpus or (need or {}).get("GPU") else 0,
            include_dashboard=False,
            ignore_reinit_error=True,
            log_to_driver=False,
            configure_logging=False,
        )


def backend_json_actors(backend_json: dict, pool_cfg: PoolConfig) -> int:
    """Actors for this backend: the backend's own ``actors`` (vllm) or the pool's."""
    return backend_json.get("actors") or pool_cfg.actors


def has_gpus() -> bool:
    """Whether the Ray cluster (once joined) or, before Ray starts, this machine has GPUs."""
    if ray.is_initialized():
        return ray.cluster_resources().get("GPU", 0) > 0
    gpus = "/proc/driver/nvidia/gpus"
    return os.path.isdir(gpus) and bool(os.listdir(gpus))


def engine_gpus(backend_json: dict) -> float:
    """GPUs one vLLM engine reserves: ``gpus_per_engine``, else its tensor-parallel size where
    there are GPUs, else 0 (a CPU build of vLLM; an actor asking for a GPU that no node has
    would wait for ever)."""
    if backend_json.get("gpus_per_engine") is not None:
        return backend_json["gpus_per_engine"]
    return int(backend_json.get("tensor_parallel_size") or 1) if has_gpus() else 0


def actor_options(backend_json: dict, pool_cfg: PoolConfig) -> dict:
    """Ray options of one backend actor.

    A vLLM engine gets ``num_gpus`` = its tensor-parallel size: Ray puts all of them on one
    node and sets CUDA_VISIBLE_DEVICES, and vLLM's own multiprocessing executor runs the
    tensor-parallel workers inside the actor (no Ray executor nested in a Ray actor). With
    tensor parallelism the GPUs are first reserved as a STRICT_PACK placement group (one
    node, all or nothing), so a pool that does not fit fails at start-up instead of
    holding half its GPUs. Where no GPU exists the engine asks for none (``engine_gpus``).
    ``infra.worker_env.runtime_env`` gives the actors their environment: the backend's own
    (``python``/``runtime_env``), the pool's, or for vLLM the project's worker environment.

    On a cluster, ``pool.resources`` (custom resources, e.g. ``{"sphere_worker": 1}``) keeps
    the actors on the nodes that declare them, and ``pool.placement: spread`` spreads them
    over those nodes (Ray's SPREAD strategy); a replacement for an actor lost with its node
    goes through the same options, so it lands on any surviving node with room. A tensor
    parallel engine keeps its placement group (its bundle carries the custom resources).
    """
    opts: dict = {"num_cpus": pool_cfg.num_cpus, "num_gpus": pool_cfg.num_gpus}
    custom = dict(pool_cfg.resources or {})
    if custom:
        opts["resources"] = custom
    if pool_cfg.placement == "spread":
        opts["scheduling_strategy"] = "SPREAD"
    if backend_json.get("kind") == "vllm":
        tp = int(backend_json.get("tensor_parallel_size") or 1)
        opts["num_gpus"] = engine_gpus(backend_json)
        if tp > 1 and opts["num_gpus"] >= tp:
            from ray.util.placement_group import placement_group
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            bundle = {"GPU": opts["num_gpus"], "CPU": max(pool_cfg.num_cpus, 1), **custom}
            pg = placement_group([bundle], strategy="STRICT_PACK")
            opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)
    env = runtime_env(backend_json, pool_cfg.runtime_env)
    if env:
        opts["runtime_env"] = env
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

    def timed(self, method: str, items: list) -> tuple[list, float]:
        """``method``'s answer to ``items`` and the seconds this actor spent on it (engine-seconds)."""
        t0 = time.monotonic()
        out = getattr(self, method)(items)
        return out, time.monotonic() - t0

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


def least_loaded(load: list[int], n: int) -> list[tuple[int, tuple[int, int]]]:
    """Split ``n`` requests over the actors whose in-flight ``load`` is least: (actor index,
    (start, end)) per chunk, in request order. The requests go to the least-loaded actors
    first and are shared so that every used actor ends as level as possible (water-filling):
    a batch arriving while another stage's batch keeps some actors busy lands on the others."""
    k = len(load)
    order = sorted(range(k), key=lambda i: (load[i], i))
    add = [0] * k
    for _ in range(n):  # one request at a time to the actor with the least (load + added); k and n are small
        j = min(order, key=lambda i: (load[i] + add[i], i))
        add[j] += 1
    out, start = [], 0
    for i in sorted((i for i in range(k) if add[i]), key=lambda i: (load[i], i)):
        out.append((i, (start, start + add[i])))
        start += add[i]
    return out


class EnginePool:
    def __init__(self, backend_cfg, pool_cfg: PoolConfig):
        ensure_ray(pool_cfg)
        self.backend_cfg = backend_cfg
        self.backend_json = backend_cfg.model_dump(mode="json")
        self.cfg = pool_cfg
        self._lock = threading.Lock()
        self._pgs: dict = {}
        self.closed = False
        self.busy: list[tuple[float, float]] = []  # (start, end) of every call, time.monotonic(): when an engine was busy
        self.spawned = 0  # engine loads: actors started (each builds its engine once), replacements included
        self.actors = [self._spawn() for _ in range(backend_json_actors(self.backend_json, pool_cfg))]
        self._load = [0] * len(self.actors)  # requests in flight per actor (least-loaded dispatch)
        try:
            infos = self._start(self.actors)
        except BackendError:
            self.close()  # actors that never started must not keep their CPUs/GPUs
            raise
        self.model_name = infos[0]["model"]
        self.reproducible = infos[0]["reproducible"]

    def _spawn(self):
        self.spawned += 1
        opts = actor_options(self.backend_json, self.cfg)
        self._asks = f"{opts['num_cpus']} CPUs / {opts['num_gpus']} GPUs" + "".join(f" / {v} {k}" for k, v in opts.get("resources", {}).items())
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
                f"(each actor asks for {self._asks}: are they free in the Ray cluster?)"
            ) from None

    def _replace(self, i: int, old) -> None:
        with self._lock:
            if self.closed:
                raise BackendUnavailable(f"engine pool {self.model_name} was closed (its run or stage ended)")
            if self.actors[i] is old:
                self._kill(old)
                self.actors[i] = self._spawn()
                self._start([self.actors[i]])

    def generate(self, requests: list[GenRequest], cost: Cost | None = None) -> list[GenResult]:
        """Generation, split across the actors (order kept, failed chunks resent); the
        answered call is added to ``cost`` (the calling stage shard's)."""
        results, seconds = self._call("generate", requests)
        if cost is not None:
            cost.add_generation(results, seconds)
        return results

    def reward(self, texts: list[str], cost: Cost | None = None) -> list[list[float]]:
        """Per-token rewards of ``texts`` from a reward model pool (same retry path), added to ``cost``."""
        rewards, seconds = self._call("reward", texts)
        if cost is not None:
            cost.add_reward(rewards, seconds)
        return rewards

    def _wait_s(self, t0: float) -> float:
        """How long to wait for one chunk: its batch timeout, cut to what is left of the call's deadline."""
        if self.cfg.call_deadline_s is None:
            return self.cfg.batch_timeout_s
        return max(0.0, min(self.cfg.batch_timeout_s, t0 + self.cfg.call_deadline_s - time.monotonic()))

    def _check_deadline(self, t0: float, method: str, i: int, actor, ref, attempts: int, reason: Exception) -> None:
        """Raise ``DeadlineExceeded`` once the call has outlived ``call_deadline_s``; an actor
        still on the chunk (``ref`` not ready) is replaced first (it would hold up every later
        call); its successor builds its backend in the background, ready for the next call."""
        d = self.cfg.call_deadline_s
        if d is None or time.monotonic() - t0 < d:
            return
        if not ray.wait([ref], timeout=0)[0]:
            with self._lock:
                if self.actors[i] is actor:
                    self._kill(actor)
                    self.actors[i] = self._spawn()
        where = f" at {self.backend_json['base_url']}" if self.backend_json.get("base_url") else ""
        raise DeadlineExceeded(f"engine pool {self.model_name}{where}: {method} did not finish within pool.call_deadline_s={d}s "
                               f"(chunk {i}: {attempts} attempts, batch_timeout_s={self.cfg.batch_timeout_s}); last error: {reason}")

    def _call(self, method: str, requests: list) -> tuple[list, float]:
        """(the answers in request order, the engine-seconds of the chunks that were answered)."""
        if not requests:
            return [], 0.0
        t0 = time.monotonic()
        with self._lock:
            slots = least_loaded(self._load, len(requests))
            for i, (a, b) in slots:
                self._load[i] += b - a
        try:
            return self._dispatch(method, [(i, requests[a:b]) for i, (a, b) in slots], t0)
        finally:
            with self._lock:
                for i, (a, b) in slots:
                    self._load[i] -= b - a
                self.busy.append((t0, time.monotonic()))

    def _dispatch(self, method: str, chunks: list[tuple[int, list]], t0: float) -> tuple[list, float]:
        """Send each (actor index, chunk); collect in order; resend a failed chunk on a fresh
        actor. Returns the answers and the summed actor-side seconds of the answered chunks."""
        out: dict[int, tuple[list, float]] = {}
        attempts = {i: 0 for i, _ in chunks}
        pending = {i: (self.actors[i], self.actors[i].timed.remote(method, c)) for i, c in chunks}
        while pending:
            i, (actor, ref) = next(iter(pending.items()))
            wait = self._wait_s(t0)
            try:
                out[i] = ray.get(ref, timeout=wait)
                del pending[i]
                continue
            except RayTaskError as e:
                cause = _unwrap(e)
                if isinstance(cause, (InvalidRequest, DeadlineExceeded)):  # final: retrying would defeat the deadline
                    raise cause from None
                if not isinstance(cause, BackendError):
                    raise BackendError(f"backend raised {type(cause).__name__}: {cause}") from None
                reason: Exception = cause
            except RayActorError as e:
                reason = BackendUnavailable(f"actor died: {e}")
            except GetTimeoutError:
                reason = BackendTimeout(f"no answer within {wait:.1f}s")
            attempts[i] += 1
            self._check_deadline(t0, method, i, actor, ref, attempts[i], reason)
            if attempts[i] > self.cfg.max_retries:
                raise BackendError(f"chunk failed {attempts[i]} times; last: {reason}") from None
            log.warning("engine pool: %s; retrying chunk %d on a fresh actor (attempt %d)", reason, i, attempts[i])
            while True:  # a replacement that fails to start (e.g. placed on a node Ray has not yet marked dead) is another attempt
                try:
                    self._replace(i, actor)
                    break
                except BackendUnavailable as e:
                    if self.closed:
                        raise
                    attempts[i] += 1
                    if attempts[i] > self.cfg.max_retries:
                        raise BackendError(f"chunk failed {attempts[i]} times; last: {e}") from None
                    log.warning("engine pool: replacement actor failed to start (%s); another (attempt %d)", e, attempts[i])
                    actor = self.actors[i]
            chunk = dict(chunks)[i]
            pending[i] = (self.actors[i], self.actors[i].timed.remote(method, chunk))
        return [r for i, _ in chunks for r in out[i][0]], sum(out[i][1] for i, _ in chunks)

    def close(self) -> None:
        """Kill the actors; a call still in flight fails (no replacement is started)."""
        with self._lock:
            self.closed = True
        for a in self.actors:
            self._kill(a)


def _key(backend_cfg, pool_cfg: PoolConfig) -> str:
    import json

    return json.dumps([backend_cfg.model_dump(mode="json"), pool_cfg.model_dump(mode="json")], sort_keys=True)


def pool_need(backend_cfg, pool_cfg: PoolConfig) -> dict[str, float]:
    """The Ray resources a pool of this backend reserves: actors × (CPUs, GPUs, custom
    resources), as ``actor_options`` asks for them (computed without reserving anything)."""
    bj = backend_cfg.model_dump(mode="json")
    n = backend_json_actors(bj, pool_cfg)
    gpus = pool_cfg.num_gpus
    if bj.get("kind") == "vllm":
        gpus = engine_gpus(bj)
    need = {"CPU": n * float(pool_cfg.num_cpus), "GPU": n * float(gpus)}
    for name, amount in (getattr(pool_cfg, "resources", None) or {}).items():
        need[name] = n * float(amount)
    return need


def total_need(backend_cfgs, pool_cfg: PoolConfig) -> dict[str, float]:
    """The resources of one pool per distinct backend config in ``backend_cfgs``."""
    out: dict[str, float] = {}
    for key, b in {_key(b, pool_cfg): b for b in backend_cfgs}.items():
        for name, amount in pool_need(b, pool_cfg).items():
            out[name] = out.get(name, 0.0) + amount
    return out


class RunPools:
    """The engine pools of one run (its ``owner``, the run directory): one pool per distinct
    (backend, pool) config, built on first use and shared by every stage and shard that names
    that backend (generation and self-correction share the policy's actors). The run releases
    a pool when no remaining stage needs it, or when another backend needs its resources and
    both cannot fit (``fits``). ``builds`` counts the pools built, ``engine_loads`` the actors
    started (each builds its engine once; replacements after a failure included)."""

    def __init__(self, owner: str):
        self.owner = owner
        self._pools: dict[str, EnginePool] = {}
        self._lock = threading.Lock()
        self._building: dict[str, threading.Lock] = {}
        self.builds = 0
        self._closed_loads = 0
        self._closed_busy: list[tuple[float, float]] = []

    def get(self, backend_cfg, pool_cfg: PoolConfig) -> EnginePool:
        key = _key(backend_cfg, pool_cfg)
        with self._lock:
            if key in self._pools:
                return self._pools[key]
            building = self._building.setdefault(key, threading.Lock())
        with building:  # one build per key; other callers of the same key wait for it, other keys do not
            with self._lock:
                if key in self._pools:
                    return self._pools[key]
            pool = EnginePool(backend_cfg, pool_cfg)
            with self._lock:
                self._pools[key] = pool
                self.builds += 1
            return pool

    def backends(self) -> list:
        """The backend configs of the pools alive now."""
        return [p.backend_cfg for p in list(self._pools.values())]

    def release(self, backend_cfg, pool_cfg: PoolConfig) -> bool:
        """Close this backend's pool if the run has one. Returns whether it had."""
        with self._lock:
            pool = self._pools.pop(_key(backend_cfg, pool_cfg), None)
        if pool is not None:
            self._retire(pool)
        return pool is not None

    def release_unneeded(self, keep: list, pool_cfg: PoolConfig) -> list[str]:
        """Close every pool whose backend is not in ``keep``. Returns the closed models."""
        keys = {_key(b, pool_cfg) for b in keep}
        with self._lock:
            gone = [p for k, p in self._pools.items() if k not in keys]
            self._pools = {k: p for k, p in self._pools.items() if k in keys}
        for p in gone:
            self._retire(p)
        return [p.model_name for p in gone]

    def make_room(self, needed: list, pool_cfg: PoolConfig, exclusive: bool = False) -> None:
        """Before work that runs on ``needed`` backends: free every pool when the work is
        ``exclusive`` (it needs the machine's GPUs, e.g. TRL training), else the pools it does
        not use when they would not fit beside its own (``fits``)."""
        if exclusive:
            self.release_unneeded([], pool_cfg)
        elif needed and not fits(self.backends() + needed, pool_cfg):
            self.release_unneeded(needed, pool_cfg)

    def _retire(self, pool: EnginePool) -> None:
        """Close a pool, keeping its engine loads and busy intervals in the run's counts."""
        self._closed_loads += pool.spawned
        self._closed_busy += pool.busy
        pool.close()

    def _intervals(self) -> list[tuple[float, float]]:
        return self._closed_busy + [x for p in list(self._pools.values()) for x in p.busy]

    def busy_seconds(self, since: float = 0.0) -> float:
        """Seconds (after ``since``, ``time.monotonic()``) during which at least one engine of
        the run was working on a call: the union of every pool's call intervals."""
        total, end = 0.0, since
        for a, b in sorted((max(a, since), b) for a, b in self._intervals() if b > since):
            if b > end:
                total += b - max(a, end)
                end = b
        return total

    def busy_span(self) -> tuple[float, float] | None:
        """(first call start, last call end) over every pool of the run; None before any call."""
        spans = self._intervals()
        return (min(a for a, _ in spans), max(b for _, b in spans)) if spans else None

    @property
    def engine_loads(self) -> int:
        return self._closed_loads + sum(p.spawned for p in list(self._pools.values()))

    def close(self) -> None:
        self.release_unneeded([], PoolConfig())


def fits(backend_cfgs, pool_cfg: PoolConfig) -> bool:
    """Whether one pool per distinct backend in ``backend_cfgs`` fits in the Ray cluster at
    once, by their declared resources (``pool_need``) against the cluster's totals."""
    have = ray.cluster_resources()
    return all(have.get(name, 0.0) + 1e-9 >= amount for name, amount in total_need(backend_cfgs, pool_cfg).items() if amount)


_RUNS: dict[str, RunPools] = {}
_RUNS_LOCK = threading.Lock()


def run_pools(owner: str | None = None) -> RunPools:
    """The pools of run ``owner`` (its run directory; None: pools used outside any run)."""
    owner = owner or ""
    with _RUNS_LOCK:
        if owner not in _RUNS:
            _RUNS[owner] = RunPools(owner)
        return _RUNS[owner]


def get_pool(backend_cfg, pool_cfg: PoolConfig, owner: str | None = None) -> EnginePool:
    """Run ``owner``'s pool for this (backend, pool) config, built on first use."""
    return run_pools(owner).get(backend_cfg, pool_cfg)


def prewarm(backend_cfg, pool_cfg: PoolConfig, owner: str | None = None) -> threading.Thread:
    """Create the pool's actors from a background thread (they build their engines while
    the driver does other work). Call ``ensure_ray`` on the main thread first: Ray's daemons
    are killed when the thread that started them exits. Errors are not lost: the stage's own
    ``get_pool`` raises them again."""

    if not ray.is_initialized():
        raise RuntimeError("call ensure_ray() on the main thread before prewarm()")

    def warm() -> None:
        try:
            get_pool(backend_cfg, pool_cfg, owner)
        except Exception as e:  # surfaced again by the stage's own get_pool
            log.warning("engine pool prewarm failed: %s", e)

    t = threading.Thread(target=warm, name="sphere-pool-prewarm", daemon=True)
    t.start()
    _PREWARMING.append(t)
    return t


_PREWARMING: list[threading.Thread] = []


def close_pool(backend_cfg, pool_cfg: PoolConfig, owner: str | None = None) -> None:
    """Close run ``owner``'s pool for this (backend, pool) config, if there is one (other
    pools, e.g. one prewarmed for a later stage, are left alone)."""
    _join_prewarms()
    run_pools(owner).release(backend_cfg, pool_cfg)


def _join_prewarms() -> None:
    while _PREWARMING:
        _PREWARMING.pop().join()


def close_run_pools(owner: str) -> RunPools | None:
    """Close every pool of run ``owner`` and forget them; returns its (closed) pools record."""
    _join_prewarms()
    with _RUNS_LOCK:
        pools = _RUNS.pop(owner, None)
    if pools is not None:
        pools.close()
    return pools


def close_pools() -> None:
    """Close every pool of the process. A prewarm still building a pool is waited for first,
    so no pool built in the background outlives the close (and holds the CPUs/GPUs)."""
    _join_prewarms()
    with _RUNS_LOCK:
        runs = list(_RUNS.values())
        _RUNS.clear()
    for r in runs:
        r.close()
