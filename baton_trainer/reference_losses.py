"""The reference model's per-clip losses for DPO and KTO, kept on disk step by step.

The reference (the base model) never trains, and every draw of the loop (batch rows, noise,
timesteps, caption dropout) is seeded by (seed, step, micro-step). So with the data fixed, the
reference's loss at a given step is the same in every run: a second run of the same data (a beta
sweep, a rerun, a resume after a kill) reads it instead of running the reference forward again,
which saves one of the step's two forward passes.

The key holds everything that changes those losses: the encoders and preprocessing (the backend's
fingerprint), the reference's weights, the encoded data, the objective (DPO's pairs share their
noise), the seed, the batch layout (batch size, accumulation, process count and rank), the caption
dropout rate and the precision. The stored values are the plain per-clip errors, before any SNR
weight, so SNR settings do not enter the key.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

REFERENCE_FORMAT = 1


def tensor_digest(h: "hashlib._Hash", tensor: torch.Tensor) -> None:
    """Feed a tensor's dtype, shape and bytes to `h` (bf16 has no numpy type: hashed as int16)."""
    t = tensor.detach().cpu().contiguous()
    h.update(f"{t.dtype}:{tuple(t.shape)}".encode())
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    h.update(t.numpy().tobytes())


def weights_digest(module: torch.nn.Module, skip: str = "lora_") -> str:
    """sha256 of a module's parameters and buffers, leaving out those whose name contains `skip`
    (a LoRA adapter: the reference is the model with it switched off)."""
    h = hashlib.sha256()
    for name, tensor in sorted([*module.named_parameters(), *module.named_buffers()], key=lambda item: item[0]):
        if skip not in name:
            h.update(name.encode())
            tensor_digest(h, tensor)
    return h.hexdigest()


def data_digest(data) -> str:
    """sha256 of an EncodedSet or PairedSet as the trainer reads it (latents and conditioning, or
    the raw clips and captions when the latent cache is off)."""
    h = hashlib.sha256()
    for part in (data.chosen, data.rejected) if hasattr(data, "chosen") else (data,):
        h.update(json.dumps(part.captions).encode())
        tensors = [part.latents, part.waveforms] + ([] if part.text is None else [part.text.tensors[k] for k in sorted(part.text.tensors)])
        for tensor in tensors:
            if tensor is not None:
                tensor_digest(h, tensor)
    return h.hexdigest()


class ReferenceLosses:
    """Per-clip reference losses by micro-step index, read from and written to one safetensors file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.losses: dict[int, torch.Tensor] = {}
        if self.path.is_file():
            self.losses = {int(k): v for k, v in load_file(str(self.path)).items()}
        self.read = 0  # micro-steps answered from the file
        self.computed = 0  # micro-steps whose reference forward ran
        self._unsaved = False

    @classmethod
    def for_run(cls, folder: Path, key_parts: dict) -> "ReferenceLosses":
        key = hashlib.sha256(json.dumps({"format": REFERENCE_FORMAT, **key_parts}, sort_keys=True, default=str).encode()).hexdigest()[:20]
        return cls(Path(folder) / f"reference_losses-{key}.safetensors")

    def get(self, index: int, device) -> torch.Tensor | None:
        found = self.losses.get(index)
        if found is not None:
            self.read += 1
            return found.to(device)
        return None

    def put(self, index: int, losses: torch.Tensor) -> None:
        self.losses[index] = losses.detach().to("cpu", torch.float32).contiguous()
        self.computed += 1
        self._unsaved = True

    def save(self) -> None:
        """Write the file atomically (readers see the old file or the new one), if anything was added."""

        if not self._unsaved:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        save_file({str(k): v for k, v in sorted(self.losses.items())}, str(tmp))
        os.replace(tmp, self.path)
        self._unsaved = False
