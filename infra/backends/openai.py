"""``openai`` backend: any OpenAI-compatible server (vLLM serve, SGLang, llama.cpp server,
hosted APIs) over HTTP, with an async client.

Rendering: ``endpoint: completions`` sends ``prompt + prefix`` to ``/completions`` (base
models, or any server that takes raw text); ``endpoint: chat`` sends (system, user =
prompt, assistant = prefix) to ``/chat/completions`` with ``continue_final_message`` so the
server continues the assistant turn (vLLM; llama.cpp prefills the same way and echoes the
prefix, which is stripped). Each of a request's ``n`` samples is its own HTTP request with
seed ``sample_seed(seed, j)``, so token accounting is per completion and a sample does not
depend on its siblings.

Flow control: at most ``limit`` requests in flight, where ``limit`` follows AIMD — it grows
by 1/limit per success (about +1 per round trip of a full window) up to
``max_concurrency`` and halves on every 429 (down to ``min_concurrency``). The learned
limit carries over between batches. 429 waits ``Retry-After`` when the server sends it;
429, 5xx, timeouts, dropped connections and unparseable bodies are retried with full
jitter (``uniform(0, min(backoff_max_s, backoff_base_s * 2**attempt))``) up to
``max_retries`` times, then raise ``BackendTimeout``/``BackendUnavailable`` (the pool's
retry path). One request's chain of attempts has an overall ``deadline_s``, counted from
its first attempt: past it the whole call raises ``DeadlineExceeded`` (final, not retried
by the pool or Prefect), so a server that accepts and never answers fails a batch after
about ``deadline_s``, whatever the timeouts and retries multiply to. 400/422 raise
``InvalidRequest``; 401/403/404 raise ``BackendUnavailable`` naming the cause. The API key is read from the environment variable ``api_key_env`` at
build time and only ever put in the Authorization header; it never appears in a message,
log or ``repr``.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass, field

from infra.backends.base import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    Completion,
    DeadlineExceeded,
    GenRequest,
    GenResult,
    InvalidRequest,
    chat_messages,
    sample_seed,
    strip_echo,
)
from infra.config import OpenAIBackend


class _Retry(Exception):
    def __init__(self, reason: str, delay: float | None = None, throttled: bool = False, timeout: bool = False):
        super().__init__(reason)
        self.delay, self.throttled, self.timeout = delay, throttled, timeout


class _Chain:
    """One request's attempts under its overall deadline, which starts when the first attempt
    gets a concurrency slot (a request queued behind a full window has not started)."""

    def __init__(self, deadline_s: float | None):
        self.deadline_s = deadline_s
        self.timeout = asyncio.timeout(None)
        self.attempts = 0
        self.last: _Retry | None = None

    def attempt(self) -> None:
        self.attempts += 1
        if self.attempts == 1 and self.deadline_s is not None:
            self.timeout.reschedule(asyncio.get_running_loop().time() + self.deadline_s)


@dataclass
class Usage:
    """What the backend has sent and received since it was built."""

    requests: int = 0
    attempts: int = 0
    retries: int = 0
    throttled: int = 0
    server_errors: int = 0
    timeouts: int = 0
    connection_errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    limit_trace: list[float] = field(default_factory=list)


class AIMDLimiter:
    """Additive-increase / multiplicative-decrease bound on requests in flight (one event loop)."""

    def __init__(self, limit: float, minimum: int, maximum: int, trace: list[float] | None = None):
        self.limit, self.minimum, self.maximum = float(limit), minimum, maximum
        self.in_flight = 0
        self.cond = asyncio.Condition()
        self.trace = trace if trace is not None else []
        self.last_cut = 0.0

    async def acquire(self) -> None:
        async with self.cond:
            await self.cond.wait_for(lambda: self.in_flight < max(1, int(self.limit)))
            self.in_flight += 1

    async def release(self, outcome: str) -> None:
        async with self.cond:
            self.in_flight -= 1
            if outcome == "ok":
                self.limit = min(self.maximum, self.limit + 1.0 / self.limit)
            elif outcome == "throttled" and time.monotonic() - self.last_cut > 0.05:
                # one cut per burst of 429s (requests already in flight report the same congestion)
                self.limit = max(self.minimum, self.limit / 2)
                self.last_cut = time.monotonic()
            self.trace.append(self.limit)
            self.cond.notify_all()


class OpenAIGenerator:
    def __init__(self, cfg: OpenAIBackend):
        try:
            import httpx  # noqa: F401
        except ImportError:
            raise BackendUnavailable("the openai backend needs httpx (installed with prefect)") from None
        self.cfg = cfg
        self.model_name = f"openai:{cfg.model}"
        self.reproducible = cfg.reproducible
        self.base_url = cfg.base_url.rstrip("/")
        key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        self._headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        self.usage = Usage()
        self._limit = float(cfg.initial_concurrency)

    def __repr__(self) -> str:  # never the headers
        return f"OpenAIGenerator(base_url={self.base_url!r}, model={self.cfg.model!r})"

    # ------------------------------------------------------------ one HTTP request

    def _body(self, r: GenRequest, j: int) -> tuple[str, dict]:
        body = {"model": self.cfg.model, "max_tokens": r.max_tokens, "temperature": r.temperature, "top_p": r.top_p,
                "n": 1, "stop": list(r.stop) or None}
        if self.cfg.send_seed:
            body["seed"] = sample_seed(r.seed, j)
        body.update(self.cfg.extra_body)
        if self.cfg.endpoint == "chat":
            body["messages"] = chat_messages(r, self.cfg.system_prompt)
            if r.prefix:
                body.update(continue_final_message=True, add_generation_prompt=False)
            if r.logprobs:
                body["logprobs"] = True
            return "/chat/completions", body
        body["prompt"] = r.prompt + r.prefix
        if r.logprobs:
            body["logprobs"] = 1
        return "/completions", body

    def _parse(self, r: GenRequest, out: dict) -> tuple[Completion, int]:
        choice = out["choices"][0]
        if self.cfg.endpoint == "chat":
            text = strip_echo(choice["message"]["content"] or "", r.prefix)
        else:
            text = choice["text"]
        if not isinstance(text, str):
            raise _Retry(f"choice text is {type(text).__name__}, not a string")
        logprob = None
        lp = choice.get("logprobs")
        if isinstance(lp, dict):
            if lp.get("token_logprobs") is not None:  # completions format
                logprob = float(sum(x for x in lp["token_logprobs"] if x is not None))
            elif lp.get("content") is not None:  # chat format (and llama.cpp's completions)
                logprob = float(sum(t["logprob"] for t in lp["content"]))
        usage = out.get("usage") or {}
        reason = choice.get("finish_reason")
        if reason == "length":
            finish = "length"
        elif "stop_reason" in choice:  # vLLM: the matched stop string, or None/eos token id at EOS
            finish = "stop" if isinstance(choice["stop_reason"], str) else "eos"
        else:
            finish = "stop" if r.stop else "eos"
        return Completion(text, finish, int(usage.get("completion_tokens") or 0), logprob), int(usage.get("prompt_tokens") or 0)

    async def _attempt(self, client, limiter: AIMDLimiter, path: str, body: dict, chain: _Chain):
        import httpx

        u = self.usage
        u.attempts += 1
        await limiter.acquire()
        chain.attempt()
        outcome = "error"
        try:
            resp = await client.post(self.base_url + path, json=body, headers=self._headers, timeout=self.cfg.request_timeout_s)
            if resp.status_code == 429:
                outcome = "throttled"
                u.throttled += 1
                retry_after = resp.headers.get("retry-after")
                try:
                    delay = min(float(retry_after), self.cfg.backoff_max_s) if retry_after else None
                except ValueError:
                    delay = None
                raise _Retry("429 too many requests", delay, throttled=True)
            if resp.status_code >= 500:
                u.server_errors += 1
                raise _Retry(f"HTTP {resp.status_code}: {resp.text[:200]}")
            if resp.status_code in (400, 422):
                raise InvalidRequest(f"{self.base_url}{path} rejected the request ({resp.status_code}): {resp.text[:300]}")
            if resp.status_code in (401, 403):
                raise BackendUnavailable(
                    f"{self.base_url}{path}: HTTP {resp.status_code} (set the API key in ${self.cfg.api_key_env})")
            if resp.status_code == 404:
                raise BackendUnavailable(f"{self.base_url}{path}: HTTP 404 (wrong base_url, or model {self.cfg.model!r} not served)")
            if resp.status_code >= 400:
                raise BackendError(f"{self.base_url}{path}: HTTP {resp.status_code}: {resp.text[:200]}")
            try:
                out = resp.json()
                out["choices"][0]
            except Exception:  # noqa: BLE001 - a truncated or garbled body is a server fault
                raise _Retry(f"unparseable response body: {resp.text[:120]!r}") from None
            outcome = "ok"
            return out
        except httpx.TimeoutException:
            u.timeouts += 1
            raise _Retry(f"no response within {self.cfg.request_timeout_s}s", timeout=True) from None
        except httpx.TransportError as e:  # refused, reset, dropped mid-response
            u.connection_errors += 1
            raise _Retry(f"connection error: {type(e).__name__}: {e}") from None
        finally:
            await limiter.release(outcome)

    async def _one(self, client, limiter: AIMDLimiter, r: GenRequest, j: int) -> tuple[Completion, int]:
        path, body = self._body(r, j)
        self.usage.requests += 1
        chain = _Chain(self.cfg.deadline_s)
        try:
            async with chain.timeout:
                return await self._chain(client, limiter, r, path, body, chain)
        except TimeoutError:
            if not chain.timeout.expired():
                raise
            last = chain.last or f"none (attempt {chain.attempts} still waiting for an answer)"
            raise DeadlineExceeded(
                f"openai backend {self.base_url}{path} (model {self.cfg.model!r}): a request did not finish within "
                f"deadline_s={self.cfg.deadline_s}s ({chain.attempts} attempts of at most {self.cfg.max_retries + 1}, "
                f"request_timeout_s={self.cfg.request_timeout_s}); last error: {last}") from None

    async def _chain(self, client, limiter: AIMDLimiter, r: GenRequest, path: str, body: dict, chain: _Chain):
        for attempt in range(self.cfg.max_retries + 1):
            try:
                out = await self._attempt(client, limiter, path, body, chain)
                try:
                    comp, prompt_tokens = self._parse(r, out)
                except (KeyError, IndexError, TypeError, ValueError) as e:  # a well-formed JSON body of the wrong shape
                    raise _Retry(f"malformed response: {type(e).__name__}: {e}") from None
                self.usage.prompt_tokens += prompt_tokens
                self.usage.completion_tokens += comp.completion_tokens
                return comp, prompt_tokens
            except _Retry as e:
                chain.last = e
                if attempt == self.cfg.max_retries:
                    break
                self.usage.retries += 1
                cap = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2**attempt)
                await asyncio.sleep(e.delay if e.delay is not None else random.uniform(0, cap))
        msg = f"{self.base_url}{path}: gave up after {self.cfg.max_retries + 1} attempts; last: {chain.last}"
        raise (BackendTimeout if chain.last and chain.last.timeout else BackendUnavailable)(msg)

    async def _generate(self, requests: list[GenRequest]) -> list[GenResult]:
        import httpx

        limiter = AIMDLimiter(self._limit, self.cfg.min_concurrency, self.cfg.max_concurrency, self.usage.limit_trace)
        limits = httpx.Limits(max_connections=self.cfg.max_concurrency, max_keepalive_connections=self.cfg.max_concurrency)
        async with httpx.AsyncClient(limits=limits) as client:
            tasks = [asyncio.create_task(self._one(client, limiter, r, j)) for r in requests for j in range(r.n)]
            try:
                flat = await asyncio.gather(*tasks)  # the first failure of any request ends the batch
            except BaseException as e:
                finished = sum(t.done() and not t.cancelled() and t.exception() is None for t in tasks)
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                if isinstance(e, DeadlineExceeded):
                    raise DeadlineExceeded(f"{e}; {finished} of the batch's {len(tasks)} samples had finished") from None
                raise
            finally:
                self._limit = limiter.limit
        done, k = [], 0
        for r in requests:
            done.append(flat[k : k + r.n])
            k += r.n
        return [GenResult([c for c, _ in outs], max(p for _, p in outs), {"model": self.model_name}) for outs in done]

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        for r in requests:
            r.validate()
        if not requests:
            return []
        try:
            asyncio.get_running_loop()
            in_loop = True
        except RuntimeError:
            in_loop = False
        if not in_loop:
            return asyncio.run(self._generate(requests))
        # called from inside an event loop (e.g. an async actor): run on a private loop thread
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as ex:
            return ex.submit(asyncio.run, self._generate(requests)).result()

    def close(self) -> None:
        pass
