"""`lalm_judge`: an audio-language model asked a yes/no question about the clip.

score = sigmoid(log p(yes) - log p(no)), both read from the next-token distribution right after
the prompt (the answer position), as Resonate (arXiv 2603.11661) scores with Qwen2.5-Omni. Only
the two answers' relative odds count, so the score does not depend on how much probability the
model puts on other tokens ("Sure", "The"). With `case_insensitive`, p(yes) is p("yes") +
p("Yes") (each spelling that is one token), since instruction-tuned models answer capitalised.

Any transformers model works whose processor follows Qwen2-Audio's contract:
`processor(text=[prompt], audio=[wave], sampling_rate=rate, return_tensors="pt", padding=True)`
with the audio placeholder in the prompt (written by the processor's chat template) and a model
whose forward returns next-token `logits` (Qwen2AudioForConditionalGeneration, Qwen2.5-Omni's
thinker via model_class="Qwen2_5OmniThinkerForConditionalGeneration", ...). Qwen2-Audio's Whisper
features cover 30 s: the judge hears the first 30 s of a longer clip.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import transformers

from .base import Reward, RewardError, resolve_device, weights_fingerprint

DEFAULT_TEMPLATE = "Does this audio contain the sound events described by the text: {caption}? Answer yes or no."
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def last_token_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token, whichever side the padding is on."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(dim=1)


class LalmJudgeReward(Reward):
    name = "lalm_judge"

    def __init__(
        self,
        model: str | os.PathLike = "Qwen/Qwen2-Audio-7B-Instruct",
        template: str = DEFAULT_TEMPLATE,
        dtype: str = "bfloat16",
        device: str | torch.device | None = None,
        batch_size: int = 8,
        yes_token: str = "yes",
        no_token: str = "no",
        case_insensitive: bool = True,
        model_class: str | None = None,
        system_prompt: str | None = None,
    ):
        if "{caption}" not in template:
            raise ValueError(f"reward 'lalm_judge': template must contain '{{caption}}', got {template!r}")
        if dtype not in DTYPES:
            raise ValueError(f"reward 'lalm_judge': dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.source, self.template, self.dtype_name = str(model), template, dtype
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.system_prompt = system_prompt
        self.processor = transformers.AutoProcessor.from_pretrained(self.source)
        tokenizer = self.processor.tokenizer
        tokenizer.padding_side = "right"  # causal: a real token's logits never see the padding after it
        self.yes_ids = self._single_token_ids(tokenizer, yes_token, case_insensitive)
        self.no_ids = self._single_token_ids(tokenizer, no_token, case_insensitive)
        self.answers = (yes_token, no_token, bool(case_insensitive))
        self.sample_rate = int(self.processor.feature_extractor.sampling_rate)
        self.model_class = model_class or (transformers.AutoConfig.from_pretrained(self.source).architectures or [None])[0]
        model_cls = getattr(transformers, self.model_class or "", None)
        if model_cls is None:
            raise RewardError(
                f"reward 'lalm_judge': cannot tell which transformers class loads {self.source}; pass model_class=, e.g. 'Qwen2AudioForConditionalGeneration'"
            )
        self.model = model_cls.from_pretrained(self.source, dtype=DTYPES[dtype]).to(self.device).eval().requires_grad_(False)
        self._fingerprint = weights_fingerprint(self.model, self.model.config)

    def _single_token_ids(self, tokenizer, word: str, case_insensitive: bool) -> list[int]:
        """Ids of the spellings of `word` that are one token; none -> RewardError with the fix."""
        spellings = list(dict.fromkeys([word, word.lower(), word.capitalize()] if case_insensitive else [word]))
        encodings = {spelling: tokenizer.encode(spelling, add_special_tokens=False) for spelling in spellings}
        ids = [ids[0] for ids in encodings.values() if len(ids) == 1]
        if not ids:
            shown = ", ".join(f"{s!r} -> {len(e)} tokens" for s, e in encodings.items())
            raise RewardError(
                f"reward 'lalm_judge': the tokenizer of {self.source} has no single token for the answer {word!r} ({shown}); "
                f"pass yes_token=/no_token= spelled as one token of this tokenizer (e.g. 'Yes' or ' yes'), or use another judge"
            )
        return sorted(set(ids))

    def prompt(self, caption: str) -> str:
        """The judge's text input for one caption, audio placeholder included."""
        # A caption's own full stop would end the question early ("... a dog barks.?").
        question = self.template.format(caption=caption.strip().rstrip("."))
        if getattr(self.processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": question}]}]
            if self.system_prompt is not None:
                messages.insert(0, {"role": "system", "content": self.system_prompt})
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        audio = getattr(self.processor, "audio_bos_token", "") + self.processor.audio_token + getattr(self.processor, "audio_eos_token", "")
        return audio + question

    @torch.no_grad()
    def _score(self, captions, waves):
        inputs = self.processor(
            text=[self.prompt(caption) for caption in captions], audio=list(waves), sampling_rate=self.sample_rate, return_tensors="pt", padding=True
        )
        inputs = {k: v.to(self.device) for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        inputs = {k: v.to(DTYPES[self.dtype_name]) if v.is_floating_point() else v for k, v in inputs.items()}
        logits = self.model(**inputs).logits
        rows = torch.arange(logits.shape[0], device=logits.device)
        log_probs = torch.log_softmax(logits[rows, last_token_positions(inputs["attention_mask"])].float(), dim=-1)
        log_yes = torch.logsumexp(log_probs[:, self.yes_ids], dim=-1)
        log_no = torch.logsumexp(log_probs[:, self.no_ids], dim=-1)
        return torch.sigmoid(log_yes - log_no).double().cpu().numpy().astype(np.float64)

    def options(self) -> dict:
        return {
            "model": self.source,
            "model_class": self.model_class,
            "template": self.template,
            "system_prompt": self.system_prompt,
            "dtype": self.dtype_name,
            "answers": self.answers,
            "weights": self._fingerprint,
        }
