"""LLaVA adapter (transformers ``LlavaForConditionalGeneration``): real llava-hf checkpoints and llava-tiny.

Prompts are plain user messages (``"What is this?"``); the adapter wraps them in the checkpoint's
chat template with one ``<image>`` placeholder (llava-1.5: ``"USER: <image>\\n{prompt} ASSISTANT:"``),
expands the placeholder to one token per visual token, and splices the vision features in through
``inputs_embeds``, so the LM loss and decoding stay differentiable w.r.t. the pixels and go through
``vision_features`` (where inference-time defenses plug in). Targets are appended after one space.

The helpers at the bottom (loading options, prompt/target tokenisation, greedy decoding) are
shared with :mod:`robustbench_mm.models.blip2`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustbench_mm.errors import WeightsError
from robustbench_mm.models.base import VLM, PlainPrompt, normalize_pixels

# Used when neither processor nor tokenizer ships a chat template (llava-1.5 format).
LLAVA_FALLBACK_TEMPLATE = "USER: <image>\n{prompt} ASSISTANT:"


class LlavaAdapter(VLM):
    """``VLM`` over a ``LlavaForConditionalGeneration``.

    ``raw_vision_features`` returns the projector output ``[B,N,D]`` (N visual tokens, D the LM
    width) - the tensor the LM consumes in place of the ``<image>`` tokens.
    """

    family = "llava"
    capabilities = frozenset({"features", "logprob", "generate"})

    def __init__(self, model: Any, tokenizer: Any, *, image_size: int, mean: Sequence[float], std: Sequence[float],
                 chat_template: str | None, image_token: str = "<image>", name: str = "", revision: str = "") -> None:
        super().__init__(image_size, name=name, revision=revision)
        self.model = model
        self.tokenizer = tokenizer
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        self.chat_template = chat_template
        self.image_token = image_token
        cfg = model.config
        self.image_token_id = int(cfg.image_token_id)
        patch = int(cfg.vision_config.patch_size)
        n = (image_size // patch) ** 2
        self.num_image_tokens = n + (1 if cfg.vision_feature_select_strategy == "full" else 0)

    # ---- vision --------------------------------------------------------------------------
    def language_model(self) -> nn.Module | None:
        return getattr(self.model, "language_model", None)

    def raw_vision_features(self, pixels: Tensor) -> Tensor:
        x = normalize_pixels(pixels.to(self.model.dtype), self.mean, self.std)
        cfg = self.model.config
        out = self.model.model.get_image_features(
            pixel_values=x,
            vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy,
            return_dict=True,
        )
        feats = out.pooler_output
        return torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats

    # ---- prompts -------------------------------------------------------------------------
    def format_prompt(self, prompt: str) -> str:
        """The full text before the answer, with the image placeholder expanded to N tokens."""
        if isinstance(prompt, PlainPrompt):
            text = str(prompt)
        elif self.chat_template:
            conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            text = self.tokenizer.apply_chat_template(conv, chat_template=self.chat_template,
                                                      add_generation_prompt=True, tokenize=False)
        else:
            text = LLAVA_FALLBACK_TEMPLATE.format(prompt=prompt)
        if self.image_token not in text:
            text = self.image_token + "\n" + text
        return text.replace(self.image_token, self.image_token * self.num_image_tokens, 1)

    def _embed(self, ids: Tensor, feats: Tensor) -> Tensor:
        emb = self.model.get_input_embeddings()(ids)
        return splice_image_features(emb, ids == self.image_token_id, feats)

    # ---- heads ---------------------------------------------------------------------------
    def lm_logits(self, pixels: Tensor, prompts: Sequence[str], targets: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Teacher-forced token logits ``[B,L,V]`` and labels ``[B,L]`` (-100 outside the target)."""
        prompts, targets = _broadcast(pixels, prompts), _broadcast(pixels, targets)
        feats = self.vision_features(pixels)
        ids, mask, labels = prompt_target_batch(self.tokenizer, [self.format_prompt(p) for p in prompts], targets,
                                                pixels.device)
        out = self.model(inputs_embeds=self._embed(ids, feats), attention_mask=mask, use_cache=False)
        return out.logits, labels

    def lm_loss(self, pixels: Tensor, prompts: Sequence[str], targets: Sequence[str]) -> Tensor:
        return sequence_nll(*self.lm_logits(pixels, prompts, targets))

    @torch.no_grad()
    def generate(self, pixels: Tensor, prompts: Sequence[str], max_new_tokens: int = 16) -> list[str]:
        prompts = _broadcast(pixels, prompts)
        feats = self.vision_features(pixels)
        ids, mask = left_padded(self.tokenizer, [self.format_prompt(p) for p in prompts], pixels.device)
        return greedy_generate(self.model, self.tokenizer, self._embed(ids, feats), mask, max_new_tokens)


def load_llava(source: str, options: Any) -> LlavaAdapter:
    """Load a LLaVA checkpoint (HF id or local directory) as a ``LlavaAdapter``.

    Safetensors only unless ``options.allow_pickle``; remote code only with
    ``options.trust_remote_code``; a local directory never touches the network.
    """
    from transformers import LlavaForConditionalGeneration

    kw = hf_load_kwargs(source, options)
    model = hf_from_pretrained(LlavaForConditionalGeneration, source, options, kw)
    processor, tokenizer, image_processor = processor_parts(source, kw)
    chat_template = getattr(processor, "chat_template", None) or getattr(tokenizer, "chat_template", None)
    image_token = getattr(processor, "image_token", "<image>")
    mean, std, size = image_stats(source, image_processor, kw, default_size=model.config.vision_config.image_size)
    adapter = LlavaAdapter(model, tokenizer, image_size=size, mean=mean, std=std, chat_template=chat_template,
                           image_token=image_token, revision=weights_revision(source, model))
    return adapter if getattr(options, "device_map", None) else adapter.to(options.device)


# ==== shared helpers (also used by blip2.py) =================================================
def processor_parts(source: str, kw: dict[str, Any]) -> tuple[Any, Any, Any]:
    """``(processor or None, tokenizer, image_processor or None)``; without a loadable processor,
    the tokenizer alone (image stats then come from preprocessor_config.json)."""
    from transformers import AutoProcessor, AutoTokenizer

    try:
        processor = AutoProcessor.from_pretrained(source, **kw)
        return processor, processor.tokenizer, processor.image_processor
    except Exception:  # noqa: BLE001 - any processor problem falls back to the tokenizer
        return None, AutoTokenizer.from_pretrained(source, **kw), None


def hf_load_kwargs(source: str, options: Any) -> dict[str, Any]:
    kw: dict[str, Any] = {"trust_remote_code": bool(options.trust_remote_code)}
    if Path(source).is_dir():
        kw["local_files_only"] = True
    return kw


def torch_dtype(options: Any) -> torch.dtype:
    dtypes = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
              "fp16": torch.float16, "float16": torch.float16}
    if options.dtype not in dtypes:
        raise WeightsError(f"unknown dtype {options.dtype!r}; use fp32, fp16 or bf16")
    return dtypes[options.dtype]


def hf_from_pretrained(cls: Any, source: str, options: Any, kw: dict[str, Any]) -> Any:
    """``cls.from_pretrained`` with the trust settings; a refused pickle checkpoint is a WeightsError."""
    model_kw = dict(kw)
    if not options.trust_remote_code:
        model_kw.pop("trust_remote_code", None)
    try:
        if getattr(options, "device_map", None):  # accelerate places the layers; adapters skip .to(device)
            model_kw["device_map"] = options.device_map
        model = cls.from_pretrained(source, dtype=torch_dtype(options), use_safetensors=not options.allow_pickle,
                                    **model_kw)
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise WeightsError(remote_code_message(source)) from None
        raise
    except OSError as err:
        if not options.allow_pickle and "safetensors" in str(err).lower():
            raise WeightsError(f"{source}: no safetensors weights; pickle checkpoints load only with "
                               f"--allow-pickle (they can run arbitrary code)") from err
        raise WeightsError(f"{source}: cannot load weights ({err})") from err
    return model.eval()


def remote_code_message(source: str) -> str:
    return (f"{source} needs custom code from its repository; pass --trust-remote-code to run it "
            f"(only for sources you trust)")


def image_stats(source: str, image_processor: Any, kw: dict[str, Any], default_size: int
                ) -> tuple[list[float], list[float], int]:
    """(mean, std, size) from the image processor or ``preprocessor_config.json``."""
    if image_processor is None:
        from transformers import AutoImageProcessor

        try:
            image_processor = AutoImageProcessor.from_pretrained(source, **kw)
        except Exception:  # noqa: BLE001
            image_processor = None
    if image_processor is None:
        raise WeightsError(f"{source}: no preprocessor_config.json (image mean/std unknown)")
    mean = list(image_processor.image_mean)
    std = list(image_processor.image_std)
    size = default_size
    crop = getattr(image_processor, "crop_size", None)
    sz = getattr(image_processor, "size", None)
    for d in (crop, sz):
        if isinstance(d, dict):
            v = d.get("height") or d.get("shortest_edge")
            if v:
                size = int(v)
                break
    return mean, std, size


def weights_revision(source: str, model: Any) -> str:
    """Short hash: commit of an HF snapshot, else a digest of the local weight files."""
    commit = getattr(model.config, "_commit_hash", None)
    if commit:
        return str(commit)[:12]
    path = Path(source)
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                h.update(fh.read(1 << 20))
            h.update(str(f.stat().st_size).encode())
        return h.hexdigest()[:12]
    return ""


def _broadcast(pixels: Tensor, texts: Sequence[str] | str) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if len(texts) == 1 and pixels.shape[0] > 1:
        texts = texts * pixels.shape[0]
    if len(texts) != pixels.shape[0]:
        raise ValueError(f"{len(texts)} prompts/targets for {pixels.shape[0]} images")
    return texts


def splice_image_features(emb: Tensor, image_mask: Tensor, feats: Tensor) -> Tensor:
    """Replace the embeddings at ``image_mask`` (``[B,L]``, N per row) with ``feats`` ``[B,N,D]``."""
    n = int(image_mask[0].sum())
    if feats.shape[1] != n or bool((image_mask.sum(1) != n).any()):
        raise ValueError(f"image tokens ({image_mask.sum(1).tolist()}) do not match features ({feats.shape[1]})")
    return emb.masked_scatter(image_mask.unsqueeze(-1), feats.to(emb.dtype))


def _prompt_target_ids(tokenizer: Any, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """Token ids of the prompt and of the target as it continues the prompt (after one space)."""
    p = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    full = tokenizer(prompt + " " + target, add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    if eos is not None and full and full[-1] == eos and (not p or p[-1] == eos):
        full, p = full[:-1], p[:-1]  # tokenizers that append EOS: keep it out of prompt and target
    if full[: len(p)] == p:
        return p, full[len(p):]
    # the boundary merged tokens: tokenise the target on its own
    return p, tokenizer(" " + target, add_special_tokens=False)["input_ids"]


def prompt_target_batch(tokenizer: Any, prompts: Sequence[str], targets: Sequence[str], device: Any
                        ) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded ``ids, attention_mask, labels`` (labels -100 except target tokens)."""
    rows = [_prompt_target_ids(tokenizer, p, t) for p, t in zip(prompts, targets)]
    length = max(len(p) + len(t) for p, t in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    labels = torch.full((len(rows), length), -100, dtype=torch.long)
    for i, (p, t) in enumerate(rows):
        seq = p + t
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, len(p): len(seq)] = torch.tensor(t, dtype=torch.long)
    return ids.to(device), mask.to(device), labels.to(device)


def sequence_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Summed next-token NLL over labelled positions, per row, in fp32."""
    logits = logits[:, :-1].float()
    labels = labels[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                          reduction="none").view(labels.shape)
    return nll.sum(1)


def left_padded(tokenizer: Any, texts: Sequence[str], device: Any) -> tuple[Tensor, Tensor]:
    rows = [tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
    eos = tokenizer.eos_token_id
    rows = [r[:-1] if (eos is not None and r and r[-1] == eos and eos != tokenizer.bos_token_id) else r for r in rows]
    length = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, length - len(r):] = torch.tensor(r)
        mask[i, length - len(r):] = 1
    return ids.to(device), mask.to(device)


def greedy_generate(lm: Any, tokenizer: Any, embeds: Tensor, mask: Tensor, max_new_tokens: int) -> list[str]:
    """Greedy decoding from ``inputs_embeds`` (left padded); returns the stripped new text."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # position ids come from the attention mask inside generate (left padding is safe)
    out = lm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                      num_beams=1, temperature=None, top_p=None, top_k=None, pad_token_id=pad,
                      eos_token_id=tokenizer.eos_token_id)
    # with inputs_embeds and no input_ids, generate returns only the new tokens
    if out.shape[1] > max_new_tokens:
        out = out[:, embeds.shape[1]:]
    texts = tokenizer.batch_decode(out, skip_special_tokens=True)
    return [t.strip() for t in texts]


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text()) if Path(path).exists() else {}
