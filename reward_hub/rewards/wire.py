"""The JSON wire format of a remote reward, shared by the client (`remote.py`) and `serve.py`.

POST /score   {"captions": [str], "audio": [base64 of little-endian float32 samples], "sample_rate": int}
          ->  {"scores": [float]}                    or, on bad input, 400 {"error": str}
GET  /info    {"name", "sample_rate", "identity", "training_allowed"}

float32 in base64 is exact (the server scores the very samples the client holds) and a third
of the size of a JSON list of numbers.
"""

from __future__ import annotations

import base64

import numpy as np


def encode_audio(wave: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(wave, dtype="<f4").tobytes()).decode("ascii")


def decode_audio(text: str) -> np.ndarray:
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    if len(raw) % 4:
        raise ValueError(f"audio payload of {len(raw)} bytes is not float32 samples")
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


def score_request(captions: list[str], waves: list[np.ndarray], sample_rate: int) -> dict:
    return {"captions": list(captions), "audio": [encode_audio(w) for w in waves], "sample_rate": int(sample_rate)}
