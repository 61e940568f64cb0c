"""The prm scorer against a local HTTP server that speaks vLLM's /pooling response shape.

The server stands in for a GPU-served PRM: it answers per step tag with [P(neg), P(pos)],
P(pos) = 0.9 when the step's arithmetic holds and 0.1 when it fails, so the test checks
the scorer's rendering, batching, ordering and error handling, not a model's judgement.
The same scorer runs against a real vLLM PRM in tests/gpu/test_prm_vllm.py.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from infra.backends.base import BackendError
from tasks.scorers import PRMScorer
from tasks.scorers import ScoreItem, step_verdict

TAG = "<extra_0>"


class PoolingHandler(BaseHTTPRequestHandler):
    calls: list = []
    fail = False

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append(body)
        if self.path != "/pooling" or type(self).fail:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"boom")
            return
        data = []
        for i, text in enumerate(body["input"]):
            steps = text.split("<|im_start|>assistant\n")[1].split(TAG)[:-1]
            probs = [[0.1, 0.9] if step_verdict(s, steps[:k]) is not False else [0.9, 0.1] for k, s in enumerate(steps)]
            data.append({"index": i, "object": "pooling", "data": probs})
        out = json.dumps({"object": "list", "data": list(reversed(data)), "model": body["model"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *a):
        pass


@pytest.fixture
def server():
    PoolingHandler.calls, PoolingHandler.fail = [], False
    srv = ThreadingHTTPServer(("127.0.0.1", 0), PoolingHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_prm_values_follow_the_reward_at_each_candidate_tag(server):
    scorer = PRMScorer(server, "prm-test", batch_size=3)
    items = [
        ScoreItem("Tom has 10.", "12", "p", ("He buys 5, so 10+5=15.",), ("He sells 3, so 15-3=12.", "He sells 3, so 15-3=11.", "")),
        ScoreItem("Ann has 4.", "8", "p", (), ("So 4*2=8.", "So 4*2=9.")),
    ]
    assert scorer.score_batch(items) == [[0.9, 0.1, None], [0.9, 0.1]]
    sent = [t for call in PoolingHandler.calls for t in call["input"]]
    assert len(PoolingHandler.calls) == 2 and len(sent) == 4  # 4 non-empty candidates in chunks of 3
    assert sent[0].count(TAG) == 2 and "Tom has 10." in sent[0] and PoolingHandler.calls[0]["model"] == "prm-test"


def test_prm_endpoint_failures_are_backend_errors(server):
    PoolingHandler.fail = True
    with pytest.raises(BackendError, match="500"):
        PRMScorer(server, "m").score_batch([ScoreItem("q", "1", "p", (), ("So 1+1=2.",))])
    with pytest.raises(BackendError, match="unreachable"):
        PRMScorer("http://127.0.0.1:9", "m", timeout_s=2).score_batch([ScoreItem("q", "1", "p", (), ("x",))])
