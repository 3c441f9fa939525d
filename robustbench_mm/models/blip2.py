"""BLIP-2 adapter (transformers ``Blip2ForConditionalGeneration``): Salesforce checkpoints and blip2-tiny.

Prompts are plain questions (``"What is this?"``); the adapter writes them in the BLIP-2 VQA format
``"Question: {prompt} Answer:"`` (an empty prompt stays empty: plain captioning). The Q-Former
outputs after the language projection (``[B,Q,D]``) take the place of the ``Q`` image tokens that
precede the text (``config.image_token_index``; checkpoints without it get the features
prepended, as older transformers did). Decoder-only language models (OPT) only; targets are
appended after one space.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from robustbench_mm.errors import WeightsError
from robustbench_mm.models.base import VLM, PlainPrompt, normalize_pixels
from robustbench_mm.models.llava import (
    _broadcast,
    greedy_generate,
    hf_from_pretrained,
    hf_load_kwargs,
    processor_parts,
    image_stats,
    left_padded,
    prompt_target_batch,
    sequence_nll,
    splice_image_features,
    weights_revision,
)

BLIP2_PROMPT_TEMPLATE = "Question: {prompt} Answer:"


class Blip2Adapter(VLM):
    """``VLM`` over a ``Blip2ForConditionalGeneration`` with a decoder-only LM."""

    family = "blip2"
    capabilities = frozenset({"features", "logprob", "generate"})

    def __init__(self, model: Any, tokenizer: Any, *, image_size: int, mean: Sequence[float], std: Sequence[float],
                 prompt_template: str = BLIP2_PROMPT_TEMPLATE, name: str = "", revision: str = "") -> None:
        super().__init__(image_size, name=name, revision=revision)
        if not model.config.use_decoder_only_language_model:
            raise WeightsError("BLIP-2 with an encoder-decoder LM (Flan-T5) is not supported yet; use an OPT checkpoint")
        self.model = model
        self.tokenizer = tokenizer
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        self.prompt_template = prompt_template
        self.num_query_tokens = int(model.config.num_query_tokens)
        idx = model.config.image_token_index
        self.image_token_id = None if idx is None else int(idx)

    def language_model(self) -> nn.Module | None:
        return getattr(self.model, "language_model", None)

    def raw_vision_features(self, pixels: Tensor) -> Tensor:
        x = normalize_pixels(pixels.to(self.model.dtype), self.mean, self.std)
        return self.model.get_image_features(pixel_values=x, return_dict=True).pooler_output

    def format_prompt(self, prompt: str) -> str:
        if isinstance(prompt, PlainPrompt):
            return str(prompt)
        return self.prompt_template.format(prompt=prompt) if prompt else ""

    def _inputs(self, ids: Tensor, mask: Tensor, feats: Tensor, left: bool) -> tuple[Tensor, Tensor]:
        """Embeddings and mask with the Q image positions in front of the text."""
        b, q = ids.shape[0], self.num_query_tokens
        emb_layer = self.model.get_input_embeddings()
        if self.image_token_id is not None:
            img_ids = torch.full((b, q), self.image_token_id, dtype=ids.dtype, device=ids.device)
            if left:  # keep padding on the far left: [pad.. img.. text..]
                pad_len = (mask == 0).sum(1)
                full_ids = torch.cat([ids, img_ids], 1)
                full_mask = torch.cat([mask, torch.ones_like(img_ids)], 1)
                # move the image block right after the padding of each row
                for i in range(b):
                    p = int(pad_len[i])
                    full_ids[i] = torch.cat([ids[i, :p], img_ids[i], ids[i, p:]])
                    full_mask[i] = torch.cat([mask[i, :p], torch.ones(q, dtype=mask.dtype, device=mask.device),
                                              mask[i, p:]])
            else:
                full_ids = torch.cat([img_ids, ids], 1)
                full_mask = torch.cat([torch.ones_like(img_ids), mask], 1)
            emb = splice_image_features(emb_layer(full_ids), full_ids == self.image_token_id, feats)
            return emb, full_mask
        # legacy checkpoints: prepend the features
        text_emb = emb_layer(ids)
        ones = torch.ones((b, q), dtype=mask.dtype, device=mask.device)
        if left:
            raise ValueError("left padding with legacy BLIP-2 configs is handled in generate()")
        return torch.cat([feats.to(text_emb.dtype), text_emb], 1), torch.cat([ones, mask], 1)

    def lm_loss(self, pixels: Tensor, prompts: Sequence[str], targets: Sequence[str]) -> Tensor:
        return sequence_nll(*self.lm_logits(pixels, prompts, targets))

    def lm_logits(self, pixels: Tensor, prompts: Sequence[str], targets: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Teacher-forced token logits ``[B,Q+L,V]`` and labels (-100 outside the target)."""
        prompts, targets = _broadcast(pixels, prompts), _broadcast(pixels, targets)
        feats = self.vision_features(pixels)
        ids, mask, labels = prompt_target_batch(self.tokenizer, [self.format_prompt(p) for p in prompts], targets,
                                                pixels.device)
        emb, full_mask = self._inputs(ids, mask, feats, left=False)
        labels = torch.cat([torch.full((ids.shape[0], self.num_query_tokens), -100, dtype=labels.dtype,
                                       device=labels.device), labels], 1)
        out = self.model.language_model(inputs_embeds=emb, attention_mask=full_mask, use_cache=False)
        return out.logits, labels

    @torch.no_grad()
    def generate(self, pixels: Tensor, prompts: Sequence[str], max_new_tokens: int = 16) -> list[str]:
        prompts = _broadcast(pixels, prompts)
        feats = self.vision_features(pixels)
        ids, mask = left_padded(self.tokenizer, [self.format_prompt(p) for p in prompts], pixels.device)
        if self.image_token_id is not None:
            emb, full_mask = self._inputs(ids, mask, feats, left=True)
        else:  # legacy: [pad.. feats.. text..] built row by row
            text_emb = self.model.get_input_embeddings()(ids)
            rows, masks = [], []
            q = self.num_query_tokens
            for i in range(ids.shape[0]):
                p = int((mask[i] == 0).sum())
                rows.append(torch.cat([text_emb[i, :p], feats[i].to(text_emb.dtype), text_emb[i, p:]]))
                masks.append(torch.cat([mask[i, :p], mask.new_ones(q), mask[i, p:]]))
            emb, full_mask = torch.stack(rows), torch.stack(masks)
        return greedy_generate(self.model.language_model, self.tokenizer, emb, full_mask, max_new_tokens)


def load_blip2(source: str, options: Any) -> Blip2Adapter:
    """Load a BLIP-2 checkpoint (HF id or local directory) as a ``Blip2Adapter``.

    Safetensors only unless ``options.allow_pickle``; remote code only with
    ``options.trust_remote_code``; a local directory never touches the network.
    """
    from transformers import Blip2ForConditionalGeneration

    kw = hf_load_kwargs(source, options)
    model = hf_from_pretrained(Blip2ForConditionalGeneration, source, options, kw)
    _, tokenizer, image_processor = processor_parts(source, kw)
    mean, std, size = image_stats(source, image_processor, kw, default_size=model.config.vision_config.image_size)
    adapter = Blip2Adapter(model, tokenizer, image_size=size, mean=mean, std=std,
                           revision=weights_revision(source, model))
    return adapter if getattr(options, "device_map", None) else adapter.to(options.device)
