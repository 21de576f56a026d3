"""`remote`: a reward served over HTTP (a GPU box running a large judge), see `reward_hub.serve`.

Each batch of `batch_size` clips is one POST. A request that fails for a reason that can pass
(connection refused, timeout, HTTP 5xx or 429) is retried `retries` times, waiting
backoff_s * 2^k seconds before retry k (k = 0, 1, ...), so a restarting server is waited for
without hammering it. A refusal of the input (other 4xx) is not retried. When it gives up, the
RewardError names the URL, the cause and the clips; batches already scored are kept by the
RewardSet's cache, so the resumed run sends only what is missing. An answer that is not one
number per clip is refused, never guessed at.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

import numpy as np

from .base import Reward, RewardError
from .wire import score_request

RETRYABLE_HTTP = {429, 500, 502, 503, 504}


class RemoteReward(Reward):
    name = "remote"

    def __init__(self, url: str, timeout_s: float = 60.0, retries: int = 3, batch_size: int = 16, backoff_s: float = 1.0):
        if not str(url).startswith(("http://", "https://")):
            raise ValueError(f"reward 'remote': url must start with http:// or https://, got {url!r}")
        self.url = str(url).rstrip("/")
        self.timeout_s, self.retries, self.batch_size, self.backoff_s = float(timeout_s), int(retries), int(batch_size), float(backoff_s)
        self._info: dict | None = None

    def info(self) -> dict:
        """The served reward's name, rate and identity (GET /info), asked once."""
        if self._info is None:
            answer = self._request("GET", "/info", None)
            if not isinstance(answer, dict) or not isinstance(answer.get("sample_rate"), int) or not isinstance(answer.get("identity"), str):
                raise RewardError(f"reward 'remote' at {self.url}: /info answered {str(answer)[:200]!r}, not a reward server's info; is the URL right?")
            self._info = answer
        return self._info

    @property
    def sample_rate(self) -> int:  # clips go out at the served reward's own rate: it resamples nothing
        return int(self.info()["sample_rate"])

    @property
    def training_allowed(self) -> bool:
        return bool(self.info().get("training_allowed", True))

    def _score(self, captions, waves):
        answer = self._request("POST", "/score", score_request(captions, waves, self.sample_rate))
        scores = answer.get("scores") if isinstance(answer, dict) else None
        if not isinstance(scores, list):
            raise RewardError(f"reward 'remote' at {self.url}: answer has no 'scores' list: {str(answer)[:200]!r}")
        if len(scores) != len(captions):
            raise RewardError(f"reward 'remote' at {self.url}: sent {len(captions)} clips, got {len(scores)} scores back")
        for i, value in enumerate(scores):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RewardError(f"reward 'remote' at {self.url}: score {i} of the answer is {value!r}, not a number")
        return np.asarray(scores, dtype=np.float64)

    def _request(self, method: str, path: str, payload: dict | None):
        """JSON answer of one request, retried with exponential backoff while the cause can pass."""
        data = json.dumps(payload).encode("utf-8") if payload is not None else None
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url + path, data=data, method=method, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    body = response.read()
            except urllib.error.HTTPError as exc:
                detail = _error_text(exc)
                if exc.code not in RETRYABLE_HTTP:
                    raise RewardError(f"reward 'remote' at {self.url}{path}: the server refused the request (HTTP {exc.code}: {detail})") from None
                last = f"HTTP {exc.code}: {detail}"
                continue
            except (TimeoutError, socket.timeout):
                last = f"no answer within timeout_s={self.timeout_s:g} s"
                continue
            except (urllib.error.URLError, ConnectionError, OSError) as exc:
                last = f"{getattr(exc, 'reason', exc)}"
                if isinstance(getattr(exc, "reason", None), (TimeoutError, socket.timeout)):
                    last = f"no answer within timeout_s={self.timeout_s:g} s"
                continue
            try:
                return json.loads(body)
            except ValueError:
                raise RewardError(f"reward 'remote' at {self.url}{path}: answer is not JSON: {body[:200]!r}") from None
        raise RewardError(
            f"reward 'remote' at {self.url}{path}: gave up after {self.retries + 1} tries ({last}); "
            f"check that the server is up (python -m reward_hub.serve), or raise timeout_s/retries"
        )

    def identity(self) -> str:
        # The served reward's identity, not the URL alone: a server restarted with another model
        # must not reuse the old model's cached scores.
        return f"{type(self).__module__}.{type(self).__qualname__}({self.info()['identity']})"

    def options(self) -> dict:
        return {"url": self.url}


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        body = exc.read()
        return str(json.loads(body).get("error", body[:200]))
    except Exception:  # the error page itself is garbage: the status line is all there is
        return str(exc.reason)
