"""A process reward model client: behind an OpenAI-compatible pooling endpoint, or on a
reward pool of Ray GPU actors (``scorer.prm_backend``: ``pool_fn`` = ``EnginePool.reward``,
which returns the same per-tag [negative, positive] rows as ``/pooling``). The ``prm`` step
scorer (``tasks.scorers.PRMScorer``) renders candidates and reads the values through it.

Serve e.g. Qwen2.5-Math-PRM-7B with vLLM (``vllm serve Qwen/Qwen2.5-Math-PRM-7B --task
reward``; STEP pooling on ``<extra_0>``, softmax over [negative, positive]). ``render``
writes question + steps, each step followed by the step tag; ``positive_at_last_tag`` POSTs
a batch to ``{base_url}/pooling`` (in chunks of ``batch_size``) and returns, per text, the
positive-class probability at its last tag (None when the model returned no tag). HTTP and
timeout failures raise ``BackendError`` (retried as infrastructure).
"""

from __future__ import annotations

import os

from infra.backends.base import BackendError, BackendTimeout

QWEN_PRM_TEMPLATE = (
    "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{{}}.<|im_end|>\n"
    "<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n{steps}<|im_end|><|endoftext|>"
)


class PRMClient:
    def __init__(self, base_url: str | None = None, model: str | None = None, *, template: str = QWEN_PRM_TEMPLATE,
                 step_tag: str = "<extra_0>", timeout_s: float = 120.0, batch_size: int = 64,
                 api_key_env: str = "SPHERE_PRM_API_KEY", pool_fn=None):
        self.model, self.template, self.tag, self.batch_size = model, template, step_tag, batch_size
        self.pool_fn = pool_fn
        if pool_fn is None:
            import httpx

            headers = {"Authorization": f"Bearer {os.environ[api_key_env]}"} if os.environ.get(api_key_env) else {}
            self.client = httpx.Client(base_url=(base_url or "").rstrip("/"), timeout=timeout_s, headers=headers)

    def render(self, question: str, steps: tuple[str, ...]) -> str:
        return self.template.format(question=question, steps="".join(f"{s}{self.tag}" for s in steps))

    def _pool(self, texts: list[str]) -> list[list[list[float]]]:
        if self.pool_fn is not None:
            return self.pool_fn(texts)
        import httpx

        try:
            r = self.client.post("/pooling", json={"model": self.model, "input": texts})
        except httpx.TimeoutException as e:
            raise BackendTimeout(f"PRM endpoint timed out: {e}") from None
        except httpx.HTTPError as e:
            raise BackendError(f"PRM endpoint unreachable: {e}") from None
        if r.status_code != 200:
            raise BackendError(f"PRM endpoint answered {r.status_code}: {r.text[:300]}")
        data = sorted(r.json()["data"], key=lambda d: d["index"])
        if len(data) != len(texts):
            raise BackendError(f"PRM endpoint returned {len(data)} results for {len(texts)} inputs")
        return [d["data"] for d in data]

    def positive_at_last_tag(self, texts: list[str]) -> list[float | None]:
        """P(positive) at each text's last step tag, in order."""
        out: list[float | None] = []
        for k in range(0, len(texts), self.batch_size):
            out.extend(float(per_tag[-1][1]) if per_tag else None for per_tag in self._pool(texts[k : k + self.batch_size]))
        return out
