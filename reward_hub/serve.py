"""Serve any registered reward over HTTP, for the `remote` reward (stdlib `http.server` only).

    python -m reward_hub.serve --reward lalm_judge --option model=Qwen/Qwen2-Audio-7B-Instruct --port 8000
    # then, on the training machine: {"name": "remote", "url": "http://gpu-box:8000"}

Requests are scored one at a time (a lock around the model): a GPU model is not safe to call
from two threads, and batching is the client's job. Wire format: `reward_hub.rewards.wire`.
"""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .rewards import Reward, RewardError, build_reward
from .rewards.wire import decode_audio

MAX_BODY_BYTES = 1 << 30  # 1 GiB: about 90 min of float32 audio at 48 kHz in one request


def make_server(reward: Reward, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """An HTTP server scoring with `reward` (port 0 picks a free port: `server.server_address`)."""
    lock = threading.Lock()
    info = {"name": reward.name, "sample_rate": int(reward.sample_rate), "identity": reward.identity(), "training_allowed": bool(reward.training_allowed)}

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, payload: dict) -> None:
            body = json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path.rstrip("/") == "/info":
                self._send(200, info)
            else:
                self._send(404, {"error": f"unknown path {self.path}; use GET /info or POST /score"})

        def do_POST(self):
            if self.path.rstrip("/") != "/score":
                self._send(404, {"error": f"unknown path {self.path}; use POST /score"})
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
                if not 0 < length <= MAX_BODY_BYTES:
                    raise ValueError(f"request body of {length} bytes; expected 1 byte to {MAX_BODY_BYTES}")
                request = json.loads(self.rfile.read(length))
                captions, sample_rate = request["captions"], request["sample_rate"]
                waves = [decode_audio(text) for text in request["audio"]]
            except (ValueError, KeyError, TypeError) as exc:
                self._send(400, {"error": f"malformed request ({type(exc).__name__}: {exc})"})
                return
            try:
                with lock:
                    scores = reward.score(captions, waves, sample_rate)
            except RewardError as exc:
                self._send(400, {"error": str(exc)})
                return
            except Exception as exc:  # the model failed (out of memory...): a retry may succeed
                self._send(500, {"error": f"{type(exc).__name__}: {exc}"})
                return
            self._send(200, {"scores": [float(s) for s in scores]})

        def log_message(self, format, *args):  # one line per request on stderr is noise at training rates
            pass

    return ThreadingHTTPServer((host, port), Handler)


def parse_option(text: str) -> tuple[str, object]:
    """ "k=v" -> (k, v), v read as JSON where it parses (numbers, true, lists), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--option takes key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m reward_hub.serve", description="Serve a registered reward over HTTP for the 'remote' reward.")
    parser.add_argument("--reward", required=True, help="registered reward name, e.g. baton, clap, lalm_judge")
    parser.add_argument(
        "--option", action="append", default=[], type=parse_option, metavar="KEY=VALUE", help="reward option (repeatable), e.g. model=RUN/reward_model"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for other machines)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    reward = build_reward({"name": args.reward, **dict(args.option)}, device=args.device)
    server = make_server(reward, args.host, args.port)
    print(f"serving reward {args.reward!r} ({reward.sample_rate} Hz) on http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
