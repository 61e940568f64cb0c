"""The text-generation Protocol every backend implements, and its typed errors.

A backend turns a batch of ``GenRequest`` into a batch of ``GenResult`` in the same order.
A request is a user ``prompt`` plus an optional assistant ``prefix`` to continue (the steps
chosen so far); the backend decides how the two are rendered (raw concatenation for a base
model, the model's chat template for an instruct model). Each request asks for ``n``
samples; sample ``j`` of a request with ``seed=s`` is reproducible where the backend says
so (``reproducible`` attribute).

Errors: infrastructure failures raise ``BackendError`` subclasses (the pool retries them),
except ``DeadlineExceeded``, which is final; a single bad output is not an error, it is
data (``finish_reason``, empty text).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class BackendError(RuntimeError):
    """The backend could not serve the batch (infrastructure failure, retryable)."""


class BackendTimeout(BackendError):
    """A request or batch exceeded its time budget."""


class BackendUnavailable(BackendError):
    """The backend could not be built or has died (model missing, server gone, OOM)."""


class DeadlineExceeded(BackendTimeout):
    """A whole request chain (every attempt, timeout and backoff of one request) or a whole
    pool call (every actor retry) outlived its overall deadline; the message names the
    backend, the deadline and what was being waited on.

    Final, unlike its parent classes: neither the pool (``EnginePool._call``) nor Prefect's
    shard retry (``tasks.common.is_transient``) retries it, since the deadline exists to
    bound the total wait and a retry would multiply it again. It is still a
    ``BackendError``, so a stage aborts its shard on it (``Engine.search_chains`` never
    isolates it as a row-level failure)."""


class InvalidRequest(ValueError):
    """A request is malformed (not retryable)."""


@dataclass(frozen=True)
class GenRequest:
    prompt: str
    prefix: str = ""
    n: int = 1
    temperature: float = 0.8
    top_p: float = 1.0
    max_tokens: int = 64
    stop: tuple[str, ...] = ()
    seed: int = 0
    logprobs: bool = False

    def validate(self) -> None:
        if self.n < 1:
            raise InvalidRequest(f"n must be >= 1, got {self.n}")
        if self.max_tokens < 1:
            raise InvalidRequest(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not 0 < self.top_p <= 1:
            raise InvalidRequest(f"top_p must be in (0, 1], got {self.top_p}")
        if self.temperature < 0:
            raise InvalidRequest(f"temperature must be >= 0, got {self.temperature}")


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" (hit a stop string), "eos" (model ended), "length"
    completion_tokens: int
    logprob: float | None = None  # sum of token log-probs, where the backend returns them


@dataclass
class GenResult:
    completions: list[Completion]
    prompt_tokens: int
    meta: dict = field(default_factory=dict)


@runtime_checkable
class TextGenerator(Protocol):
    """Batch text generation. ``model_name`` names the model on every row it makes."""

    model_name: str
    reproducible: bool

    def generate(self, requests: list[GenRequest]) -> list[GenResult]: ...

    def close(self) -> None: ...


def chat_messages(r: GenRequest, system_prompt: str | None = None) -> list[dict]:
    """The request as chat messages: optional system, the user prompt, and the prefix as an
    assistant turn for the server to continue (present only when the prefix is non-empty)."""
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [{"role": "user", "content": r.prompt}]
    if r.prefix:
        messages.append({"role": "assistant", "content": r.prefix})
    return messages


def strip_echo(text: str, prefix: str) -> str:
    """``text`` without a leading copy of the prefilled assistant ``prefix`` (llama.cpp echoes it)."""
    return text[len(prefix) :] if prefix and text.startswith(prefix) else text


def sample_seed(seed: int, j: int) -> int:
    """Seed of sample ``j`` of a request: independent streams, stable across batching."""
    return (seed * 1_000_003 + j * 7_919 + 17) & 0x7FFFFFFF
