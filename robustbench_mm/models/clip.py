"""CLIP adapters: transformers ``CLIPModel`` and open_clip, behind the VLM interface."""

from __future__ import annotations

import hashlib
from abc import abstractmethod
import json
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from robustbench_mm.errors import WeightsError
from robustbench_mm.models.base import VLM, normalize_pixels

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class ClipAdapter(VLM):
    """Zero-shot CLIP on pixels in [0,1]; ``raw_vision_features`` is the projected image embedding.

    Subclasses provide ``_image_embed(normalised_pixels)`` and ``_text_embed(texts)``.
    Class-prompt embeddings are cached, since attacks call ``classify`` with the same prompts
    every step.
    """

    family = "clip"
    capabilities = frozenset({"features", "classify"})

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float], logit_scale: float) -> None:
        super().__init__(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.logit_scale_value = float(logit_scale)
        self._text_cache: dict[tuple[str, ...], Tensor] = {}

    @abstractmethod
    def _image_embed(self, pixels: Tensor) -> Tensor:
        """Image embedding ``[B,D]`` of normalised pixels."""

    @abstractmethod
    def _text_embed(self, texts: Sequence[str]) -> Tensor:
        """Text embedding ``[T,D]`` (not yet normalised)."""

    def raw_vision_features(self, pixels: Tensor) -> Tensor:
        return self._image_embed(normalize_pixels(pixels, self.mean, self.std))

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        key = tuple(texts)
        if key not in self._text_cache:
            with torch.no_grad():
                self._text_cache[key] = F.normalize(self._text_embed(list(texts)).float(), dim=-1)
        return self._text_cache[key]

    def class_weights(self, class_prompts: Sequence[str] | Sequence[Sequence[str]]) -> Tensor:
        """Unit class embeddings ``[C,D]``; a list of prompts per class is a template ensemble."""
        if class_prompts and not isinstance(class_prompts[0], str):
            per_class = [self.encode_text(list(p)).mean(dim=0) for p in class_prompts]
            return F.normalize(torch.stack(per_class), dim=-1)
        return self.encode_text(class_prompts)  # type: ignore[arg-type]

    def classify(self, pixels: Tensor, class_prompts: Sequence[str] | Sequence[Sequence[str]]) -> Tensor:
        image = F.normalize(self.vision_features(pixels).float(), dim=-1)
        text = self.class_weights(class_prompts).to(image.device)
        return self.logit_scale_value * image @ text.T

    def train(self, mode: bool = True) -> "ClipAdapter":
        self._text_cache.clear()  # weights may change during training defenses
        return super().train(mode)  # type: ignore[return-value]


class HFClip(ClipAdapter):
    """transformers ``CLIPModel`` with its tokenizer."""

    def __init__(self, model: Any, tokenizer: Any, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__(model.config.vision_config.image_size, mean, std, model.logit_scale.exp().item())
        self.model = model
        self.tokenizer = tokenizer

    def _image_embed(self, pixels: Tensor) -> Tensor:
        dtype = next(self.model.parameters()).dtype
        out = self.model.get_image_features(pixel_values=pixels.to(dtype))
        return out if isinstance(out, Tensor) else out.pooler_output

    def _text_embed(self, texts: Sequence[str]) -> Tensor:
        max_len = self.model.config.text_config.max_position_embeddings
        tok = self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        tok = {k: v.to(self.model.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
        out = self.model.get_text_features(**tok)
        return out if isinstance(out, Tensor) else out.pooler_output


class OpenClip(ClipAdapter):
    """An open_clip model (by architecture + pretrained tag, hf-hub id, or local directory)."""

    def __init__(self, model: Any, tokenizer: Any, mean: Sequence[float], std: Sequence[float], size: int) -> None:
        super().__init__(size, mean, std, model.logit_scale.exp().item())
        self.model = model
        self.tokenizer = tokenizer

    def _image_embed(self, pixels: Tensor) -> Tensor:
        dtype = next(self.model.parameters()).dtype
        return self.model.encode_image(pixels.to(dtype))  # type: ignore[no-any-return]

    def _text_embed(self, texts: Sequence[str]) -> Tensor:
        return self.model.encode_text(self.tokenizer(list(texts)).to(self.device))  # type: ignore[no-any-return]


def weights_revision(path: Path) -> str:
    """Short content hash of the weight files in a directory (recorded as model_revision)."""
    h = hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")) + sorted(path.glob("*.pt")):
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def check_no_pickle(path: Path, allow_pickle: bool) -> None:
    """Refuse pickle-only checkpoints unless the user opted in."""
    if not path.is_dir() or allow_pickle:
        return
    if not list(path.glob("*.safetensors")) and (list(path.glob("*.bin")) + list(path.glob("*.pt"))):
        raise WeightsError(f"{path} holds only pickle checkpoints (.bin/.pt); pass --allow-pickle to load them")


def load_hf_clip(source: str, *, options: Any) -> HFClip:
    """Load a transformers CLIPModel from an HF id or a local directory (safetensors by default)."""
    from transformers import AutoTokenizer, CLIPModel

    local = Path(source).is_dir()
    if local:
        check_no_pickle(Path(source), options.allow_pickle)
    kwargs = dict(
        local_files_only=local,
        trust_remote_code=options.trust_remote_code,
        use_safetensors=None if options.allow_pickle else True,
    )
    if getattr(options, "device_map", None):
        kwargs["device_map"] = options.device_map
    try:
        model = CLIPModel.from_pretrained(source, dtype=DTYPES[options.dtype], **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            from robustbench_mm.models.llava import remote_code_message

            raise WeightsError(remote_code_message(source)) from None
        raise
    except OSError as exc:
        raise WeightsError(f"could not load CLIP {source!r}: {str(exc).splitlines()[0]}; "
                           f"use the bundled --model clip-tiny offline") from None
    mean, std = OPENAI_MEAN, OPENAI_STD
    proc = Path(source) / "preprocessor_config.json"
    if local and proc.exists():
        cfg = json.loads(proc.read_text())
        mean, std = cfg.get("image_mean", mean), cfg.get("image_std", std)
    adapter = HFClip(model if getattr(options, "device_map", None) else model.to(options.device), tokenizer, mean, std)
    adapter.revision = weights_revision(Path(source)) if local else str(getattr(model.config, "_commit_hash", "") or "")
    return adapter


def load_open_clip(source: str, *, options: Any) -> OpenClip:
    """Load open_clip: ``open_clip:<arch>:<pretrained>``, ``open_clip:hf-hub:<id>`` or a local dir."""
    import open_clip

    if Path(source).is_dir():
        check_no_pickle(Path(source), options.allow_pickle)
        name, pretrained = "local-dir:" + str(Path(source).resolve()), None
    else:
        parts = source.removeprefix("open_clip:").split(":")
        if parts[0] == "hf-hub":
            name, pretrained = "hf-hub:" + parts[1], None
        else:
            name, pretrained = parts[0], (parts[1] if len(parts) > 1 else None)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, precision={"bf16": "bf16", "fp16": "fp16"}.get(options.dtype, "fp32")
        )
        tokenizer = open_clip.get_tokenizer(name)
    except (OSError, RuntimeError, ValueError) as exc:
        raise WeightsError(f"could not load open_clip {source!r}: {str(exc).splitlines()[0]}; "
                           f"use the bundled --model openclip-tiny offline") from None
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    mean = getattr(model.visual, "image_mean", None) or OPENAI_MEAN
    std = getattr(model.visual, "image_std", None) or OPENAI_STD
    adapter = OpenClip(model.to(options.device), tokenizer, mean, std, size)
    adapter.revision = weights_revision(Path(source)) if Path(source).is_dir() else (pretrained or "")
    return adapter
