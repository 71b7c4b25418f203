"""Prompt encoding: long (>77 tokens) and weighted prompts through compel, with textual-inversion vectors."""

from __future__ import annotations

import torch
from compel import BaseTextualInversionManager, Compel, ReturnedEmbeddingsType
from compel.prompt_parser import FlattenedPrompt, Fragment
from diffusers import (
    DiffusionPipeline,
)

from engine.client import prompts


class _Vectors(BaseTextualInversionManager):
    """A multi-vector embedding's name stands for all its tokens (`name`, `name_1`, ...), by token id.
    (compel's diffusers manager decodes and re-encodes the prompt, which CLIP's BPE does not survive.)"""

    def __init__(self, tokenizer, names: list[str]) -> None:
        self.expand: dict[int, list[int]] = {}
        for name in names:
            ids = [tokenizer.convert_tokens_to_ids(name)]
            while (more := tokenizer.convert_tokens_to_ids(f"{name}_{len(ids)}")) != tokenizer.unk_token_id:
                ids.append(more)
            self.expand[ids[0]] = ids

    def expand_textual_inversion_token_ids_if_necessary(self, token_ids: list[int]) -> list[int]:
        return [t for token in token_ids for t in self.expand.get(token, [token])]


class PromptEncoder:
    """Prompts -> embeddings through compel, with AUTOMATIC1111's syntax (engine/prompts.py).

    Each BREAK segment is encoded on its own (compel chunks a long one by the encoder's window)
    and the segments are joined along the tokens, as A1111 does. SDXL: both encoders' penultimate
    layers side by side, the pooled vector from the big one.
    """

    def __init__(self, pipe: DiffusionPipeline, embeddings: list[str] = ()) -> None:
        self.pipe = pipe
        common = dict(truncate_long_prompts=False, device=pipe.device)
        self.pooled = getattr(pipe, "text_encoder_2", None) is not None
        self.compels: list[Compel] = []
        if not self.pooled:
            self.compels.append(
                Compel(
                    tokenizer=pipe.tokenizer,
                    text_encoder=pipe.text_encoder,
                    textual_inversion_manager=_Vectors(pipe.tokenizer, embeddings),
                    **common,
                )
            )
            return
        kind = ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED
        if pipe.text_encoder is not None:
            self.compels.append(Compel(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder,
                                       textual_inversion_manager=_Vectors(pipe.tokenizer, embeddings),
                                       returned_embeddings_type=kind, **common))  # fmt: skip
        self.compels.append(Compel(tokenizer=pipe.tokenizer_2, text_encoder=pipe.text_encoder_2,
                                   textual_inversion_manager=_Vectors(pipe.tokenizer_2, embeddings),
                                   returned_embeddings_type=kind, requires_pooled=True, **common))  # fmt: skip

    @torch.inference_mode()
    def __call__(self, prompt: str, negative_prompt: str, n: int) -> dict:
        zero_negative = not negative_prompt and self.pooled and self.pipe.config.get("force_zeros_for_empty_prompt")
        pos = [self._encode(c, prompt) for c in self.compels]
        neg = [self._encode(c, negative_prompt) for c in self.compels]
        length = max(t.shape[1] for t in pos + neg)
        pos = [self._pad(c, t, length) for c, t in zip(self.compels, pos)]
        neg = [self._pad(c, t, length) for c, t in zip(self.compels, neg)]
        embeds, negative = torch.cat(pos, dim=-1), torch.cat(neg, dim=-1)
        if zero_negative:
            negative = torch.zeros_like(negative)
        out = {"prompt_embeds": embeds.repeat(n, 1, 1), "negative_prompt_embeds": negative.repeat(n, 1, 1)}
        if self.pooled:
            big = self.compels[-1].conditioning_provider
            pooled = big.get_pooled_embeddings([prompts.segments(prompt)[0]], device=self.pipe.device)
            negative_pooled = big.get_pooled_embeddings([prompts.segments(negative_prompt)[0]], device=self.pipe.device)
            if zero_negative:
                negative_pooled = torch.zeros_like(negative_pooled)
            out |= {
                "pooled_prompt_embeds": pooled.repeat(n, 1),
                "negative_pooled_prompt_embeds": negative_pooled.repeat(n, 1),
            }
        return out

    @staticmethod
    def _encode(compel: Compel, text: str) -> torch.Tensor:
        parts = []
        for segment in prompts.segments(text):
            flat = FlattenedPrompt([Fragment(t, w) for t, w in prompts.fragments(segment)])
            (conditioning, _), _ = compel.build_conditioning_tensor_for_prompt_object(flat)
            parts.append(conditioning if conditioning.ndim == 3 else conditioning.unsqueeze(0))
        return torch.cat(parts, dim=1)

    @staticmethod
    def _pad(compel: Compel, t: torch.Tensor, length: int) -> torch.Tensor:
        if t.shape[1] == length:
            return t
        empty = PromptEncoder._encode(compel, "")
        while t.shape[1] < length:
            t = torch.cat([t, empty], dim=1)
        return t[:, :length]
