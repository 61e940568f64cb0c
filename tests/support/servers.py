"""Real HTTP servers on 127.0.0.1 for the openai backend's tests.

``llamacpp_server()``: llama.cpp's own server (xllamacpp) serving the packaged SmolLM2
GGUF over the OpenAI API. ``FaultServer``: an OpenAI-compatible server that proxies to an
upstream (or answers itself) and injects faults from a schedule — 429 bursts (with and
without Retry-After), 500/503, slow responses past the client's timeout, connections
dropped before the response, and garbled bodies — or caps concurrency with 429s.
``HungServer``: accepts every connection and never answers (a wedged server).
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llamacpp_server(n_parallel: int = 1, n_ctx: int = 2048):
    """Start llama.cpp's HTTP server in this process; returns (server, base_url ending in /v1)."""
    import xllamacpp as xlc

    from infra.backends.llamacpp import resolve_model

    p = xlc.CommonParams()
    p.model.path = str(resolve_model("smollm2"))
    p.n_ctx = n_ctx
    p.n_parallel = n_parallel
    p.cpuparams.n_threads = 2
    p.cpuparams_batch.n_threads = 2
    p.warmup = False
    p.verbosity = -1
    p.port = free_port()
    server = xlc.Server(p)
    return server, server.listening_address.rstrip("/") + "/v1"


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default backlog (5) refuses connections under bursts
    daemon_threads = True


class FaultServer:
    """``schedule``: faults applied to requests in arrival order, cycling ('ok', '429',
    '429-retry-after', '500', '503', 'slow', 'drop', 'garbage'). ``max_in_flight``: answer 429
    whenever more requests than this are in flight. ``require_key``: 401 unless the request
    carries 'Authorization: Bearer <key>'."""

    def __init__(self, upstream: str | None = None, schedule=("ok",), max_in_flight: int | None = None,
                 slow_s: float = 3.0, answer_delay_s: float = 0.0, require_key: str | None = None):
        self.upstream = upstream.rstrip("/") if upstream else None
        self._faults = itertools.cycle(schedule)
        self.max_in_flight, self.slow_s, self.answer_delay_s, self.require_key = max_in_flight, slow_s, answer_delay_s, require_key
        self.lock = threading.Lock()
        self.in_flight = 0
        self.peak_in_flight = 0
        self.counts: dict[str, int] = {}
        self.seen_auth: list[str | None] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                owner._handle(self)

        self.httpd = _Server(("127.0.0.1", free_port()), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def set_schedule(self, schedule) -> None:
        with self.lock:
            self._faults = itertools.cycle(schedule)

    def _count(self, what: str) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def _send(self, h, status: int, body: bytes, headers: dict | None = None) -> None:
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    def _handle(self, h) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length", 0)))
        auth = h.headers.get("Authorization")
        with self.lock:
            self.seen_auth.append(auth)
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            over = self.max_in_flight is not None and self.in_flight > self.max_in_flight
            fault = next(self._faults)
        try:
            if self.require_key and auth != f"Bearer {self.require_key}":
                self._count("401")
                return self._send(h, 401, b'{"error": "unauthorized"}')
            if over:
                self._count("429-cap")
                return self._send(h, 429, b'{"error": "too many requests"}')
            self._count(fault)
            if fault == "429":
                return self._send(h, 429, b'{"error": "rate limited"}')
            if fault == "429-retry-after":
                return self._send(h, 429, b'{"error": "rate limited"}', {"Retry-After": "0.2"})
            if fault in ("500", "503"):
                return self._send(h, int(fault), b'{"error": "server error"}')
            if fault == "drop":
                h.close_connection = True
                h.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault == "slow":
                time.sleep(self.slow_s)
            if fault == "garbage":
                return self._send(h, 200, b'{"choices": [{"text": ')
            self._send(h, 200, self._answer(h.path, body))
        finally:
            with self.lock:
                self.in_flight -= 1

    def _answer(self, path: str, body: bytes) -> bytes:
        if self.upstream:
            req = urllib.request.Request(self.upstream + path.removeprefix("/v1"), data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.read()
        time.sleep(self.answer_delay_s)
        req = json.loads(body)
        text = f" answer to seed {req.get('seed')}"
        return json.dumps({"choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": 5, "completion_tokens": 4}}).encode()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class HungServer:
    """Accepts TCP connections and never reads or answers them: a server that is up (the
    connect succeeds) but wedged. ``accepted`` counts the connections it took."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.conns: list[socket.socket] = []
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"

    @property
    def accepted(self) -> int:
        return len(self.conns)

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.closed.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for c in self.conns:
            c.close()
        self.thread.join(timeout=5)
