"""The `remote` reward against real HTTP servers on localhost: the reference server
(`reward_hub.serve`) wrapping a tiny CLAP, a server that is down, slow, or answers garbage."""

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from baton_trainer.testing import save_tiny_clap
from reward_hub.rewards import Reward, RewardError, RewardSet, ScoreCache, build_reward
from reward_hub.serve import make_server

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = ["a dog barks", "rain falls on a roof", "a bell rings", "a car passes by", "birds chirp", "a door slams"]


def clips(n: int, sample_rate: int = 16_000) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(sample_rate)).astype(np.float32) for _ in range(n)]


class Serving:
    """An HTTP server on a free localhost port, served from a thread until `close`."""

    def __init__(self, server: ThreadingHTTPServer):
        self.server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self.thread = threading.Thread(target=server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class SlowCountingReward(Reward):
    """A scorer of this file's own: mean sample value, after `delay_s`, counting the clips."""

    name = "slow"
    sample_rate = 16_000

    def __init__(self, delay_s: float = 0.0):
        self.delay_s, self.scored = delay_s, 0

    def _score(self, captions, waves):
        time.sleep(self.delay_s)
        self.scored += len(waves)
        return [float(np.mean(w)) for w in waves]


@pytest.fixture(scope="module")
def clap(tmp_path_factory):
    return build_reward({"name": "clap", "model": str(save_tiny_clap(tmp_path_factory.mktemp("clap") / "clap"))}, device="cpu")


def test_remote_scores_equal_local_scores(clap):
    serving = Serving(make_server(clap, port=0))
    try:
        remote = build_reward({"name": "remote", "url": serving.url, "batch_size": 2})
        assert remote.sample_rate == 48_000 and clap.identity() in remote.identity()
        np.testing.assert_allclose(remote.score(CAPTIONS[:3], clips(3), 16_000), clap.score(CAPTIONS[:3], clips(3), 16_000), atol=1e-6)
    finally:
        serving.close()


def test_a_server_that_is_down_is_named_with_the_clips(tmp_path):
    serving = Serving(make_server(SlowCountingReward(), port=0))
    url = serving.url
    serving.close()
    remote = build_reward({"name": "remote", "url": url, "retries": 2, "backoff_s": 0.05, "timeout_s": 1.0})
    start = time.monotonic()
    with pytest.raises(RewardError, match=rf"reward 'remote' at {url}/info: gave up after 3 tries \(.*\); check that the server is up.*\(clips 0, 1\)"):
        remote.score(CAPTIONS[:2], clips(2), 16_000)
    assert time.monotonic() - start >= 0.05 + 0.1  # backoff 0.05 s, then 0.1 s


def test_a_slow_server_times_out_naming_the_clips():
    serving = Serving(make_server(SlowCountingReward(delay_s=1.5), port=0))
    try:
        remote = build_reward({"name": "remote", "url": serving.url, "timeout_s": 0.3, "retries": 1, "backoff_s": 0.01, "batch_size": 2})
        with pytest.raises(RewardError, match=r"/score: gave up after 2 tries \(no answer within timeout_s=0.3 s\).*\(clips 0, 1\)"):
            remote.score(CAPTIONS[:3], clips(3), 16_000)
    finally:
        serving.close()


def test_a_resumed_run_sends_only_the_clips_not_yet_scored(tmp_path):
    """The server goes down after two batches; a new server (another port, same reward) finishes
    the run from the cache, scoring only the clips the first one never answered."""
    first = SlowCountingReward()
    serving = Serving(make_server(first, port=0))
    cache = tmp_path / "scores.jsonl"
    remote = build_reward({"name": "remote", "url": serving.url, "batch_size": 2, "retries": 0})
    RewardSet([remote], cache=ScoreCache(cache)).score(CAPTIONS[:4], clips(4), 16_000)
    serving.close()
    with pytest.raises(RewardError, match=r"gave up after 1 tries.*\(clips 4, 5\)"):
        RewardSet([remote], cache=ScoreCache(cache)).score(CAPTIONS, clips(6), 16_000)
    second = SlowCountingReward()
    serving = Serving(make_server(second, port=0))
    try:
        moved = build_reward({"name": "remote", "url": serving.url, "batch_size": 2})
        scores = RewardSet([moved], cache=ScoreCache(cache)).score(CAPTIONS, clips(6), 16_000)["remote"]
    finally:
        serving.close()
    assert (first.scored, second.scored) == (4, 2)
    np.testing.assert_allclose(scores, [np.mean(c) for c in clips(6)], atol=1e-7)


class GarbageHandler(BaseHTTPRequestHandler):
    """A server with a valid /info and whatever /score answer the test sets."""

    answer = b"{}"
    status = 200
    info = json.dumps({"name": "x", "sample_rate": 16000, "identity": "garbage", "training_allowed": True}).encode()

    def _send(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send(200, type(self).info)

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).requests += 1
        self._send(type(self).status, type(self).answer)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(
    "status, answer, message",
    [
        (200, b'{"scores": [0.5]}', r"sent 2 clips, got 1 scores back"),
        (200, b'{"scores": ["high", 0.1]}', r"score 0 of the answer is 'high', not a number"),
        (200, b'{"values": [0.5, 0.1]}', r"answer has no 'scores' list"),
        (200, b"<html>proxy error</html>", r"answer is not JSON"),
        (200, b'{"scores": [NaN, 0.1]}', r"reward 'remote': clip 0: score is NaN or infinite"),
        (400, b'{"error": "caption 1 is too long"}', r"the server refused the request \(HTTP 400: caption 1 is too long\)"),
        (503, b'{"error": "loading"}', r"gave up after 2 tries \(HTTP 503: loading\)"),
    ],
)
def test_garbage_answers_are_refused(status, answer, message):
    handler = type("Handler", (GarbageHandler,), {"answer": answer, "status": status, "requests": 0})
    serving = Serving(ThreadingHTTPServer(("127.0.0.1", 0), handler))
    try:
        remote = build_reward({"name": "remote", "url": serving.url, "retries": 1, "backoff_s": 0.01})
        with pytest.raises(RewardError, match=message):
            remote.score(CAPTIONS[:2], clips(2), 16_000)
        assert handler.requests == (2 if status == 503 else 1)  # only what can pass is retried
    finally:
        serving.close()


def test_the_server_refuses_malformed_requests_with_a_reason():
    serving = Serving(make_server(SlowCountingReward(), port=0))
    try:
        for body, reason in [
            (b"not json", "malformed request"),
            (json.dumps({"captions": ["a"], "audio": ["!!"], "sample_rate": 16000}).encode(), "malformed request"),
        ]:
            request = urllib.request.Request(serving.url + "/score", data=body, method="POST")
            with pytest.raises(urllib.error.HTTPError) as error:
                urllib.request.urlopen(request, timeout=5)
            assert error.value.code == 400 and reason in json.loads(error.value.read())["error"]
        empty = json.dumps({"captions": [""], "audio": [""], "sample_rate": 16000}).encode()
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(urllib.request.Request(serving.url + "/score", data=empty, method="POST"), timeout=5)
        assert error.value.code == 400 and "reward 'slow': clip 0" in json.loads(error.value.read())["error"]
    finally:
        serving.close()


def test_the_command_line_server_serves_a_registered_reward(clap):
    command = [sys.executable, "-m", "reward_hub.serve", "--reward", "clap", "--option", f"model={clap.source}", "--port", "0", "--device", "cpu"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        line = process.stdout.readline()
        assert line.startswith("serving reward 'clap' (48000 Hz) on http://127.0.0.1:"), line + process.stderr.read()
        remote = build_reward({"name": "remote", "url": line.split(" on ")[1].strip()})
        np.testing.assert_allclose(remote.score(CAPTIONS[:2], clips(2), 16_000), clap.score(CAPTIONS[:2], clips(2), 16_000), atol=1e-6)
    finally:
        process.terminate()
        process.wait(timeout=10)
