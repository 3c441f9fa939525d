"""CLIP tower helpers for transformers CLIPModel and open_clip: tokens, text/image features,
tower parameters, saving and loading weights."""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from torch import Tensor, nn

from robustbench_mm.errors import WeightsError


@dataclass
class TextInput:
    """Tokenized prompts ``ids [T,L]``, ``mask [T,L]`` and an optional additive perturbation of the
    token embeddings ``delta [T,L,E]`` (the continuous text attack of MMCoA / CRMT [BENCH])."""

    ids: Tensor
    mask: Tensor
    delta: Tensor | None = None

    def with_delta(self, delta: Tensor | None) -> "TextInput":
        return TextInput(self.ids, self.mask, delta)


def is_hf(adapter: Any) -> bool:
    return hasattr(adapter.model, "text_model")


def token_embedding(adapter: Any) -> nn.Embedding:
    m = adapter.model
    return m.text_model.embeddings.token_embedding if is_hf(adapter) else m.token_embedding  # type: ignore[no-any-return]


def tokenize(adapter: Any, texts: Sequence[str]) -> TextInput:
    """Token ids the adapter's own ``_text_embed`` would use, on the adapter's device."""
    if is_hf(adapter):
        max_len = adapter.model.config.text_config.max_position_embeddings
        tok = adapter.tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        ids, mask = tok["input_ids"], tok["attention_mask"]
    else:
        ids = adapter.tokenizer(list(texts))
        mask = (ids != 0).long()
    return TextInput(ids.to(adapter.device), mask.to(adapter.device))


@contextlib.contextmanager
def embedding_offset(adapter: Any, delta: Tensor | None) -> Iterator[None]:
    """Add ``delta`` to the token-embedding output for the forwards inside the block."""
    if delta is None:
        yield
        return
    handle = token_embedding(adapter).register_forward_hook(lambda _m, _i, out: out + delta.to(out.dtype))
    try:
        yield
    finally:
        handle.remove()


def text_features(adapter: Any, text: TextInput) -> Tensor:
    """Projected (unnormalised) text embeddings ``[T,D]`` with gradients; ``text.delta`` applied."""
    with embedding_offset(adapter, text.delta):
        if is_hf(adapter):
            out = adapter.model.get_text_features(input_ids=text.ids, attention_mask=text.mask)
            return out if isinstance(out, Tensor) else out.pooler_output
        return adapter.model.encode_text(text.ids)  # type: ignore[no-any-return]


def image_features(adapter: Any, pixels: Tensor) -> Tensor:
    """Projected (unnormalised) image embeddings ``[B,D]`` with gradients (raw, undefended path)."""
    return adapter.raw_vision_features(pixels)  # type: ignore[no-any-return]


def mean_token_norm(adapter: Any) -> float:
    """Mean l2 norm of the token-embedding rows: the unit of relative text budgets."""
    return float(token_embedding(adapter).weight.detach().float().norm(dim=1).mean())


def tower_parameters(adapter: Any, towers: Sequence[str]) -> list[nn.Parameter]:
    """Parameters of the ``vision`` and/or ``text`` towers (logit scale stays frozen) [BENCH]."""
    m = adapter.model
    groups: dict[str, list[Any]] = {}
    if is_hf(adapter):
        groups = {"vision": [m.vision_model, m.visual_projection], "text": [m.text_model, m.text_projection]}
    else:
        text_mods = [m.transformer, m.token_embedding, m.ln_final]
        groups = {"vision": [m.visual], "text": text_mods}
    params: list[Any] = []
    for t in towers:
        for mod in groups[t]:
            params.extend(mod.parameters())
    if not is_hf(adapter) and "text" in towers:
        params += [p for p in (m.positional_embedding, m.text_projection) if isinstance(p, nn.Parameter)]
    return params


def save_clip_weights(adapter: Any, out: Path, source: str | None) -> None:
    """Save the underlying model in its own format, loadable with ``--model <out>``."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    if is_hf(adapter):
        adapter.model.save_pretrained(out, safe_serialization=True)
        adapter.tokenizer.save_pretrained(out)
    else:
        sd = {k: v.detach().contiguous().cpu() for k, v in adapter.model.state_dict().items()}
        save_file(sd, str(out / "open_clip_model.safetensors"))
    if source and Path(source).is_dir():
        for name in ("preprocessor_config.json", "open_clip_config.json"):
            if (Path(source) / name).exists():
                shutil.copy(Path(source) / name, out / name)


def load_clip_weights(adapter: Any, path: Path) -> None:
    """Load weights saved by ``save_clip_weights`` into an adapter of the same architecture."""
    from safetensors.torch import load_file

    name = "model.safetensors" if is_hf(adapter) else "open_clip_model.safetensors"
    sd = load_file(str(path / name), device=str(adapter.device))
    missing, unexpected = adapter.model.load_state_dict(sd, strict=False)
    buffers = {n for n, _ in adapter.model.named_buffers()}
    if unexpected or [k for k in missing if k not in buffers]:
        raise WeightsError(f"{path}: defended weights do not match model {adapter.name!r} "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]}); delete the directory to retrain")
    adapter.logit_scale_value = float(adapter.model.logit_scale.exp().item())
