"""``--vision-encoder`` in a cell: which encoder a name means, checked before any weights load, and
the swap after the VLM has loaded (``models.vision_swap`` does the swap itself)."""

from __future__ import annotations

from typing import Any

from robustbench_mm.errors import ConfigError
from robustbench_mm.models.vision_swap import SWAPPABLE_FAMILIES, encoder_presets, resolve_encoder, swap_vision_encoder
from robustbench_mm.models.zoo import LoadOptions, ModelEntry, check_available, entry_for, load_model, resolve_model_name


def zoo_encoders() -> dict[str, str]:
    """The bundled CLIP encoders by name: clip-tiny and every shipped defended clip-tiny whose weights
    are a whole CLIP model (``fare-clip-tiny``, ``tecoa-clip-tiny``, ...), as local directories."""
    from robustbench_mm.defenses.training import SHIPPED_DIR, finished

    found = {"clip-tiny": "clip-tiny"}
    for path in sorted(SHIPPED_DIR.glob("*-clip-tiny")):
        if finished(path) and (path / "config.json").is_file() and (path / "model.safetensors").is_file():
            found[path.name] = str(path)
    return found


def encoder_entry(ref: str, vlm: ModelEntry, revision: str | None = None) -> ModelEntry:
    """The CLIP model entry ``ref`` names for VLM ``vlm``; one clear error for anything else (a
    family without a swappable tower, an unknown name, weights not cached)."""
    if vlm.family not in SWAPPABLE_FAMILIES:
        raise ConfigError(f"--vision-encoder applies to llava and blip2 models, not {vlm.family} model "
                          f"{vlm.name!r}; for a CLIP model pass the encoder as --model")
    presets = zoo_encoders()
    source = resolve_encoder(ref, presets)
    try:
        entry = entry_for(resolve_model_name(source), revision)
    except ConfigError as exc:  # unknown names: say which presets exist
        raise ConfigError(f"--vision-encoder {ref!r}: {exc}; presets: {', '.join(encoder_presets(presets))}") from None
    if entry.family != "clip":
        raise ConfigError(f"--vision-encoder {ref!r} is a {entry.family} model; it must be a CLIP image encoder "
                          f"(presets: {', '.join(encoder_presets(presets))})")
    check_available(entry)
    return entry


def encoder_config(entry: ModelEntry, ref: str) -> dict[str, Any]:
    """What identifies the encoder in the cell id."""
    return {"ref": ref, "source": entry.source, "weights": entry.fingerprint()}


def with_encoder(model: Any, entry: ModelEntry, ref: str, options: LoadOptions) -> Any:
    """``model`` with the vision tower of the CLIP ``entry`` (loaded with the VLM's options)."""
    encoder = load_model(entry.name, options)
    return swap_vision_encoder(model, encoder, ref)
