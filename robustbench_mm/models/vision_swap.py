"""``--vision-encoder``: put a (robust) CLIP image encoder in place of a LLaVA or BLIP-2 vision tower.

This is how the robust encoders people download are used (RobustVLM plugs FARE into LLaVA-1.5): the
VLM keeps its projector / Q-Former and language model, and only the tower that turns pixels into
patch tokens changes. The encoder must produce tokens of the same width on the same grid (width,
image size and patch size); anything else is refused with one line before any evaluation.

Encoders come from the same loaders as ``--model`` (a registered CLIP, a local directory, a Hugging
Face id, or an open_clip ``hf-hub:`` id); open_clip towers are converted to transformers'
``CLIPVisionModel`` layout so both VLM families take one kind of module.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from robustbench_mm.errors import ConfigError

# The public robust (and original) CLIP encoders the robust-VLM literature plugs into LLaVA-1.5;
# they download on first use (``hf download``), like any hub model.
PUBLIC_ENCODERS: dict[str, str] = {
    "openai-vit-l-14-336": "openai/clip-vit-large-patch14-336",  # LLaVA-1.5's own tower
    "openai-vit-l-14": "openai/clip-vit-large-patch14",
    "fare2-vit-l-14": "hf-hub:chs20/fare2-clip",  # Schlarmann et al. 2024, eps 2/255
    "fare4-vit-l-14": "hf-hub:chs20/fare4-clip",  # eps 4/255
    "tecoa2-vit-l-14": "hf-hub:chs20/tecoa2-clip",  # Mao et al. 2023 objective, trained by the FARE authors
    "tecoa4-vit-l-14": "hf-hub:chs20/tecoa4-clip",
}
SWAPPABLE_FAMILIES = ("llava", "blip2")


def resolve_encoder(ref: str, local: Mapping[str, str]) -> str:
    """The ``--model``-style source of an encoder reference: a preset name (``local``: the zoo's
    trained encoders, passed in by the runner; then ``PUBLIC_ENCODERS``) or the reference itself."""
    return local.get(ref) or PUBLIC_ENCODERS.get(ref) or ref


def encoder_presets(local: Mapping[str, str]) -> dict[str, str]:
    return {**dict(local), **PUBLIC_ENCODERS}


def hf_vision_tower(encoder: Any) -> nn.Module:
    """A transformers ``CLIPVisionModel`` computing ``encoder``'s image tower (a copy)."""
    model = encoder.model
    if hasattr(model, "vision_model"):  # transformers CLIPModel
        return copy.deepcopy(model.vision_model)
    if hasattr(model, "visual"):
        return open_clip_to_hf(model.visual)
    raise ConfigError(f"--vision-encoder {getattr(encoder, 'name', '')!r} is not a CLIP model with an image tower; "
                      f"use a CLIP checkpoint (transformers or open_clip)")


def open_clip_to_hf(visual: nn.Module) -> nn.Module:
    """Convert an open_clip ``VisionTransformer`` (class token pooling) to ``CLIPVisionModel``."""
    from transformers import CLIPVisionConfig
    from transformers import CLIPVisionModel

    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok" or \
            not hasattr(visual, "conv1") or isinstance(getattr(visual, "ln_pre", None), nn.Identity):
        raise ConfigError("--vision-encoder: only open_clip ViTs with class-token pooling and a pre-LayerNorm "
                          "(the OpenAI CLIP layout) convert to a LLaVA/BLIP-2 tower")
    blocks = visual.transformer.resblocks
    width = int(visual.conv1.out_channels)
    act = "quick_gelu" if type(blocks[0].mlp.gelu).__name__ == "QuickGELU" else "gelu"
    cfg = CLIPVisionConfig(hidden_size=width, intermediate_size=int(blocks[0].mlp.c_fc.out_features),
                           num_hidden_layers=len(blocks), num_attention_heads=int(blocks[0].attn.num_heads),
                           image_size=int(visual.image_size[0] if isinstance(visual.image_size, (tuple, list))
                                          else visual.image_size),
                           patch_size=int(visual.conv1.kernel_size[0]), hidden_act=act,
                           layer_norm_eps=float(blocks[0].ln_1.eps))
    tower = CLIPVisionModel(cfg)
    sd = visual.state_dict()
    out: dict[str, Tensor] = {
        "embeddings.class_embedding": sd["class_embedding"],
        "embeddings.patch_embedding.weight": sd["conv1.weight"],
        "embeddings.position_embedding.weight": sd["positional_embedding"],
        "pre_layrnorm.weight": sd["ln_pre.weight"], "pre_layrnorm.bias": sd["ln_pre.bias"],
        "post_layernorm.weight": sd["ln_post.weight"], "post_layernorm.bias": sd["ln_post.bias"],
    }
    for i in range(len(blocks)):
        src, dst = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for name, part in zip(("q_proj", "k_proj", "v_proj"), range(3)):
            rows = slice(part * width, (part + 1) * width)
            out[f"{dst}self_attn.{name}.weight"] = sd[f"{src}attn.in_proj_weight"][rows]
            out[f"{dst}self_attn.{name}.bias"] = sd[f"{src}attn.in_proj_bias"][rows]
        pairs = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
                 "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
        for a, b in pairs.items():
            out[f"{dst}{b}.weight"] = sd[f"{src}{a}.weight"]
            out[f"{dst}{b}.bias"] = sd[f"{src}{a}.bias"]
    missing, unexpected = tower.load_state_dict(out, strict=False)
    if unexpected or [k for k in missing if "position_ids" not in k]:
        raise ConfigError(f"--vision-encoder: open_clip tower did not convert (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})")
    return tower


def geometry(cfg: Any) -> tuple[int, int, int]:
    """``(width, image size, patch size)`` of a vision config: what the VLM's next stage sees."""
    return int(cfg.hidden_size), int(cfg.image_size), int(cfg.patch_size)


def vlm_vision_config(vlm: Any) -> Any:
    return vlm.model.config.vision_config


class ClipTowerAsBlip2Vision(nn.Module):
    """A ``CLIPVisionModel`` behind ``Blip2VisionModel``'s output contract: BLIP-2's tower
    applies its final LayerNorm to every token (CLIP's only to the pooled one), and its Q-Former reads
    all tokens, so the CLIP tower's post-LayerNorm is applied to the whole sequence here."""

    def __init__(self, tower: nn.Module) -> None:
        super().__init__()
        self.tower = tower

    def forward(self, pixel_values: Tensor, **kwargs: Any) -> Any:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        kwargs.pop("return_dict", None)
        out = self.tower(pixel_values=pixel_values, **kwargs)
        tokens = self.tower.post_layernorm(out.last_hidden_state)
        return BaseModelOutputWithPooling(last_hidden_state=tokens, pooler_output=tokens[:, 0],
                                          hidden_states=out.hidden_states, attentions=out.attentions)


def swap_vision_encoder(vlm: Any, encoder: Any, label: str) -> Any:
    """``vlm`` with its vision tower replaced by ``encoder``'s (a CLIP adapter); the VLM's revision
    records the encoder so cached results never mix towers. Width and grid must match."""
    family = getattr(vlm, "family", "")
    if family not in SWAPPABLE_FAMILIES:
        raise ConfigError(f"--vision-encoder applies to llava and blip2 models, not {family} model "
                          f"{getattr(vlm, 'name', '')!r}; for a CLIP model pass the encoder as --model")
    tower = hf_vision_tower(encoder)
    want, got = geometry(vlm_vision_config(vlm)), geometry(tower.config)
    if want != got:
        raise ConfigError(
            f"--vision-encoder {label}: its tower gives width {got[0]} at {got[1]} px (patch {got[2]}), but "
            f"{getattr(vlm, 'name', '')}'s projector expects width {want[0]} at {want[1]} px (patch {want[2]}); "
            f"use an encoder of the VLM's own architecture (e.g. a robust fine-tune of its original tower)")
    param = next(vlm.model.parameters())
    tower = tower.to(device=param.device, dtype=param.dtype)
    if family == "llava":
        vlm.model.model.vision_tower = tower  # a CLIPVisionModel, as LLaVA's own
    else:
        vlm.model.vision_model = ClipTowerAsBlip2Vision(tower)
    for p in vlm.model.parameters():
        p.requires_grad_(False)
    vlm.vision_encoder = label
    vlm.revision = f"{getattr(vlm, 'revision', '')}+vision:{label}:{getattr(encoder, 'revision', '')}"
    return vlm.freeze() if hasattr(vlm, "freeze") else vlm


def tower_outputs(vlm: Any, pixels: Tensor) -> Tensor:
    """Patch tokens ``[B,N,W]`` the VLM's vision tower hands on (for tests and diagnostics)."""
    with torch.no_grad():
        x = pixels.to(next(vlm.model.parameters()).dtype)
        if vlm.family == "llava":
            return vlm.model.model.vision_tower(pixel_values=x).last_hidden_state  # type: ignore[no-any-return]
        return vlm.model.vision_model(pixel_values=x).last_hidden_state  # type: ignore[no-any-return]
