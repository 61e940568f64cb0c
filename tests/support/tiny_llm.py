"""An engine that honours ``vllm.LLM``'s constructor and ``generate`` contract on CPU, backed
by the tiny model, so the CPU tests drive ``infra.backends.vllm`` through the same seam
the real engine uses (the gpu tier runs the real ``vllm.LLM``).

Contract honoured: ``LLM(model=..., **engine_args)``; ``generate(prompts, sampling_params,
use_tqdm=False)`` returns one ``RequestOutput`` per prompt in order, with
``prompt_token_ids`` and ``outputs`` = ``n`` ``CompletionOutput`` (``text``, ``token_ids``,
``finish_reason`` in {"stop", "length"}, ``stop_reason`` = the matched stop string or None
at end of sequence, ``cumulative_logprob`` when ``logprobs`` is set, else None);
``get_tokenizer()``. As vLLM 0.32 does: a prompt longer than ``max_model_len`` and greedy
sampling with ``n > 1`` (``SamplingParams``) are refused with a ``VLLMValidationError`` (a ``VLLMClientError``, not a ``ValueError``), and
an end-of-sequence completion's ``token_ids`` end with the EOS id.

Fault knobs (engine_args, for tests): ``oom_at_start`` raises the error vLLM raises when the
KV cache does not fit; ``die_once_file`` makes the first engine that finds the file missing
create it and die on its first ``generate`` (EngineDeadError-like), so a fresh engine works.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


class VLLMError(Exception):
    pass


class VLLMClientError(VLLMError):
    pass


class VLLMValidationError(VLLMClientError):
    pass


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    stop: list[str] | None = None
    seed: int | None = None
    logprobs: int | None = None

    def __post_init__(self):
        if self.temperature == 0 and self.n > 1:
            raise VLLMValidationError(f"n must be 1 when using greedy sampling, got {self.n}.")


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    finish_reason: str
    stop_reason: str | int | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)


@dataclass
class _Pooled:
    data: object


@dataclass
class PoolingRequestOutput:
    prompt: str
    outputs: _Pooled


class EngineDeadError(RuntimeError):
    pass


class TinyLLM:
    def __init__(self, model: str = "policy", gpu_memory_utilization: float = 0.9, oom_at_start: bool = False,
                 die_once_file: str | None = None, step_tag: str | None = None, max_model_len: int | None = None, **_ignored):
        if oom_at_start:
            raise ValueError("No available memory for the cache blocks. Try increasing `gpu_memory_utilization` "
                             "when initializing the engine.")
        from infra.backends.tiny import TinyGenerator
        from infra.config import TinyBackend

        self.gen = TinyGenerator(TinyBackend(checkpoint=model))
        self.die = False
        if die_once_file and not os.path.exists(die_once_file):
            open(die_once_file, "w").close()
            self.die = True
        self.calls = 0
        self.step_tag = step_tag
        self.max_model_len = max_model_len

    def get_tokenizer(self):
        return self.gen.tok

    def generate(self, prompts, sampling_params, use_tqdm: bool = False):
        from infra.backends.base import GenRequest

        self.calls += 1
        if self.die:
            raise EngineDeadError("EngineCore encountered an issue. See stack trace (above) for the root cause.")
        if not isinstance(sampling_params, list):
            sampling_params = [sampling_params] * len(prompts)
        for p in prompts:
            n = len(self.gen.tok.encode(p)) + 1
            if self.max_model_len and n > self.max_model_len:
                raise VLLMValidationError(f"The decoder prompt (length {n}) is longer than the maximum model length of {self.max_model_len}.")
        reqs = [GenRequest(p, n=sp.n, temperature=sp.temperature, top_p=sp.top_p, max_tokens=sp.max_tokens,
                           stop=tuple(sp.stop or ()), seed=sp.seed or 0) for p, sp in zip(prompts, sampling_params)]
        results = self.gen.generate(reqs)
        outs = []
        for k, (p, sp, res) in enumerate(zip(prompts, sampling_params, results)):
            comps = []
            for j, c in enumerate(res.completions):
                stop_hit = c.finish_reason == "stop"
                eos = [self.gen.tok.eos_token_id] if c.finish_reason == "eos" else []  # vLLM counts the EOS id
                comps.append(CompletionOutput(
                    j, c.text, list(range(c.completion_tokens)) + eos, c.logprob if sp.logprobs is not None else None,
                    "length" if c.finish_reason == "length" else "stop",
                    next(iter(sp.stop or [""]), None) if stop_hit else None))
            outs.append(RequestOutput(str(k), p, list(range(res.prompt_tokens)), comps))
        return outs

    def _token_logprobs(self, text: str):
        import torch

        ids = self.gen.tok.encode(text)
        T = len(ids)
        mask = torch.tril(torch.ones(T, T, dtype=torch.bool))[None, None]
        with torch.no_grad():
            logits = self.gen.model(torch.tensor([ids]), torch.arange(T)[None], mask)[0][0]
        return torch.log_softmax(logits[:-1], -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0].numpy()

    def encode(self, prompts, pooling_params=None, *, use_tqdm: bool = False, pooling_task: str | None = None):
        """``LLM.encode``'s contract for ``pooling_task="token_classify"`` (vLLM 0.32 has no
        ``LLM.reward``): one output per prompt with ``outputs.data``. Without
        ``step_tag`` (engine_args): each token's log-prob under the tiny model. With it, vLLM's
        STEP pooling shape: one [negative, positive] row per tag, positive = the tiny model's
        geometric-mean token probability of the step before the tag (a stand-in PRM)."""
        import numpy as np

        if pooling_task != "token_classify":
            raise ValueError(f"pooling task {pooling_task!r} is not supported by this model; it serves token_classify")
        out = []
        for p in prompts:
            if self.step_tag:
                steps = p.split(self.step_tag)[:-1]
                rows = []
                for k, step in enumerate(steps):
                    lp = self._token_logprobs((steps[k - 1] if k else "") + step)
                    pos = float(np.exp(lp[-max(1, len(step.split())):].mean())) if len(lp) else 0.0
                    rows.append([1.0 - pos, pos])
                data = np.asarray(rows, dtype=np.float32).reshape(-1, 2)
            else:
                data = np.asarray(self._token_logprobs(p), dtype=np.float32)
            out.append(PoolingRequestOutput(p, _Pooled(data)))
        return out
