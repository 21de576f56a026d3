"""The reference model of objectives that compare against the base model (DPO, KTO), and the disk
store of its per-clip losses.

Under LoRA the reference is the same denoiser with its adapter switched off (`adapters_disabled`):
no copy, no extra memory (diffusers' Diffusion-DPO example does the same). Under full fine-tuning
it is a frozen copy of the denoiser taken before the first step, in the frozen modules' dtype:
in accelerator memory, or with `offload_copies` in CPU memory, brought to the accelerator layer by
layer for each forward by accelerate's `cpu_offload` hooks.
"""

from __future__ import annotations

import contextlib
import copy

import torch

from ..denoising import DenoisingDraw, Noised
from ..losses import per_sample_mse
from ..reference_losses import ReferenceLosses, data_digest, weights_digest


class ReferenceModel:
    """The base model's per-clip denoising errors, computed or read from the disk store."""

    def __init__(self, denoiser: torch.nn.Module, draw: DenoisingDraw, use_lora: bool, on_cpu: bool = False):
        self.draw = draw
        # Under LoRA `denoiser` is the trained module itself (the trainer unwraps it per call).
        self.frozen = None
        if not use_lora:
            device = draw.accelerator.device
            self.frozen = copy.deepcopy(denoiser).requires_grad_(False).to("cpu" if on_cpu else device, dtype=draw.weight_dtype).eval()
            self.frozen_digest = weights_digest(self.frozen)  # here: offloading leaves meta tensors in the module
            if on_cpu and device.type != "cpu":
                from accelerate import cpu_offload  # only with an accelerator to offload from

                cpu_offload(self.frozen, execution_device=device)
        self.store: ReferenceLosses | None = None
        self.store_data = None

    def open_store(self, feedback, trained: torch.nn.Module, key: dict, folder) -> None:
        """The disk store of the reference's losses for this data, draw and reference
        (`reference_losses.py` says what the key holds)."""
        key = {**key, "reference": self.frozen_digest if self.frozen is not None else weights_digest(trained), "data": data_digest(feedback)}
        self.store, self.store_data = ReferenceLosses.for_run(folder, key), feedback
        if self.store.losses:
            self.draw.accelerator.print(f"reference losses of {len(self.store.losses)} micro-steps read from {self.store.path}")

    @contextlib.contextmanager
    def module(self, trained: torch.nn.Module):
        """The reference denoiser for the block: the frozen copy, or `trained` with its adapter off."""
        if self.frozen is not None:
            yield self.frozen
        else:
            with self.draw.backend.adapters_disabled(self.draw.accelerator.unwrap_model(trained)) as base:
                yield base

    def errors(self, trained: torch.nn.Module, noised: Noised, feedback, index: int) -> torch.Tensor:
        """Plain per-clip errors (before any SNR weight) of the reference on `noised`; the store
        answers for the data it was opened on only."""
        store = self.store if feedback is self.store_data else None
        ref = store.get(index, noised.noisy.device) if store is not None else None
        if ref is None:
            with torch.no_grad():  # the reference first: switching the adapter back on re-enables its gradients
                with self.module(trained) as reference:
                    ref = per_sample_mse(self.draw.predict(reference, noised), noised.target)
            if store is not None:
                store.put(index, ref)
        return ref

    def save(self) -> None:
        if self.store is not None:  # each rank its own file, no collective
            self.store.save()
