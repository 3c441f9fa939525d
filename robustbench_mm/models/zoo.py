"""Model registry: real checkpoints (Hugging Face ids / open_clip tags) and the bundled tiny zoo.

A model entry binds a name to an adapter loader and a source. The bundled models load through
exactly the same loaders as the real ones (``from_pretrained`` on a local directory).
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from robustbench_mm.errors import UnknownNameError, WeightsError
from robustbench_mm.registry import Registry, unknown_name_message

log = logging.getLogger(__name__)

ZOO_DIR = Path(__file__).resolve().parent / "zoo"


@dataclass(frozen=True)
class ModelEntry:
    """How to load one named model.

    Attributes:
        name: registry name (kebab-case), recorded in every table row.
        family: ``clip``, ``llava`` or ``blip2``.
        loader: ``"module:function"`` taking ``(source, **LoadOptions)`` and returning a VLM.
        source: HF id, ``open_clip:<arch>:<pretrained>``, or a directory of the bundled zoo.
        bundled: whether the weights ship inside the package.
        params: approximate parameter count (for ``list models``), 0 if unknown.
    """

    name: str
    family: str
    loader: str
    source: str
    bundled: bool = False
    params: int = 0

    def resolved_source(self) -> str:
        return str(ZOO_DIR / self.source) if self.bundled else self.source

    def available(self) -> bool:
        """Weights present without network: bundled, a local dir, or in the HF / open_clip cache."""
        src = self.resolved_source()
        if self.bundled or Path(src).exists():
            return Path(src).exists()
        return _in_hf_cache(src)

    def fingerprint(self) -> str:
        """Cheap identity of local weights (file names, sizes, first MiB), so a retrained model
        gets new cell ids; hub ids are identified by name (their revision is recorded per row)."""
        path = Path(self.resolved_source())
        if not path.is_dir():
            return ""
        import hashlib

        h = hashlib.sha256()
        for f in sorted(path.iterdir()):
            if f.suffix in (".safetensors", ".bin", ".pt", ".pth") and f.is_file():
                h.update(f"{f.name}:{f.stat().st_size}".encode())
                with open(f, "rb") as fh:
                    h.update(fh.read(1 << 20))
        return h.hexdigest()[:12]

    def load_fn(self) -> Callable[..., Any]:
        module, fn = self.loader.split(":")
        return getattr(importlib.import_module(module), fn)  # type: ignore[no-any-return]


MODELS: Registry[ModelEntry] = Registry("model")

_HF_CLIP = "robustbench_mm.models.clip:load_hf_clip"
_OPEN_CLIP = "robustbench_mm.models.clip:load_open_clip"
_LLAVA = "robustbench_mm.models.llava:load_llava"
_BLIP2 = "robustbench_mm.models.blip2:load_blip2"

_ENTRIES = [
    # bundled zoo: trained on Fashion-MNIST by scripts/train_zoo.py, see each MODEL_CARD.md
    ModelEntry("clip-tiny", "clip", _HF_CLIP, "clip-tiny", bundled=True),
    ModelEntry("openclip-tiny", "clip", _OPEN_CLIP, "openclip-tiny", bundled=True),
    ModelEntry("llava-tiny", "llava", _LLAVA, "llava-tiny", bundled=True),
    ModelEntry("blip2-tiny", "blip2", _BLIP2, "blip2-tiny", bundled=True),
    # real checkpoints
    ModelEntry("clip-vit-b-32", "clip", _HF_CLIP, "openai/clip-vit-base-patch32", params=151_000_000),
    ModelEntry("clip-vit-l-14", "clip", _HF_CLIP, "openai/clip-vit-large-patch14", params=428_000_000),
    ModelEntry("clip-vit-l-14-336", "clip", _HF_CLIP, "openai/clip-vit-large-patch14-336", params=428_000_000),
    ModelEntry("openclip-vit-b-32-laion2b", "clip", _OPEN_CLIP, "open_clip:ViT-B-32:laion2b_s34b_b79k", params=151_000_000),
    ModelEntry("tecoa-vit-l-14", "clip", _OPEN_CLIP, "open_clip:hf-hub:chs20/tecoa4-clip", params=428_000_000),
    ModelEntry("fare-vit-l-14", "clip", _OPEN_CLIP, "open_clip:hf-hub:chs20/fare4-clip", params=428_000_000),
    ModelEntry("llava-1.5-7b", "llava", _LLAVA, "llava-hf/llava-1.5-7b-hf", params=7_060_000_000),
    ModelEntry("llava-1.5-13b", "llava", _LLAVA, "llava-hf/llava-1.5-13b-hf", params=13_350_000_000),
    ModelEntry("blip2-opt-2.7b", "blip2", _BLIP2, "Salesforce/blip2-opt-2.7b", params=3_745_000_000),
    ModelEntry("blip2-flan-t5-xl", "blip2", _BLIP2, "Salesforce/blip2-flan-t5-xl", params=3_942_000_000),
]
for _e in _ENTRIES:
    MODELS.add(_e.name, _e)

# family alias -> (real default, bundled fallback)
ALIASES: dict[str, tuple[str, str]] = {
    "clip": ("clip-vit-b-32", "clip-tiny"),
    "llava": ("llava-1.5-7b", "llava-tiny"),
    "blip2": ("blip2-opt-2.7b", "blip2-tiny"),
}


def _in_hf_cache(source: str) -> bool:
    """True when an HF id (or open_clip hf-hub id) has a snapshot in the local cache."""
    repo = source.split("hf-hub:")[-1] if source.startswith("open_clip:") else source
    if source.startswith("open_clip:") and "hf-hub:" not in source:
        return False  # open_clip pretrained tags download by URL; assume absent offline
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo, "config.json")
        hit2 = try_to_load_from_cache(repo, "open_clip_config.json")
        return isinstance(hit, str) or isinstance(hit2, str)
    except Exception:  # noqa: BLE001 - any cache problem means "not available"
        return False


def resolve_model_name(name: str) -> str:
    """Map a family alias to a concrete registry name; anything else must be registered or a path.

    ``clip``/``llava``/``blip2`` resolve to the real default when its weights are cached locally,
    otherwise to the bundled tiny model with a visible warning.
    """
    if name in ALIASES:
        real, tiny = ALIASES[name]
        if MODELS.get(real).available():
            return real
        log.warning("%s: weights of %s not found locally; using bundled %s", name, real, tiny)
        return tiny
    if name in MODELS or _is_local_model_dir(name):
        return name
    available = MODELS.names() + sorted(ALIASES)
    raise UnknownNameError(unknown_name_message("model", name, available))


def _is_local_model_dir(name: str) -> bool:
    return os.sep in name and Path(name).is_dir()


def entry_for(name: str) -> ModelEntry:
    """Registry entry for a name, or an ad-hoc entry for a local model directory."""
    if name in MODELS:
        return MODELS.get(name)
    path = Path(name).resolve()
    family = _guess_family(path)
    loader = {"clip": _HF_CLIP, "llava": _LLAVA, "blip2": _BLIP2, "open_clip": _OPEN_CLIP}[family]
    return ModelEntry(str(path), "clip" if family == "open_clip" else family, loader, str(path))


def _guess_family(path: Path) -> str:
    import json

    if (path / "open_clip_config.json").exists():
        return "open_clip"
    cfg = path / "config.json"
    if not cfg.exists():
        raise WeightsError(f"{path}: no config.json or open_clip_config.json; not a model directory")
    model_type = json.loads(cfg.read_text()).get("model_type", "")
    for family in ("llava", "blip-2", "clip"):
        if model_type.startswith(family):
            return family.replace("-", "")
    raise WeightsError(f"{path}: model_type {model_type!r} is not CLIP, LLaVA or BLIP-2")


@dataclass(frozen=True)
class LoadOptions:
    device: str = "cpu"
    dtype: str = "fp32"
    allow_pickle: bool = False
    trust_remote_code: bool = False


def load_model(name: str, options: LoadOptions | None = None) -> Any:
    """Load a model by registry name, alias or local directory; returns a frozen VLM."""
    options = options or LoadOptions()
    entry = entry_for(resolve_model_name(name))
    if not entry.available():
        fallback = ALIASES.get(entry.family, ("", "clip-tiny"))[1]
        raise WeightsError(
            f"weights for {entry.name} not found (looked for {entry.resolved_source()} locally and in "
            f"the Hugging Face cache; no network); use the bundled --model {fallback} instead"
        )
    _quiet_transformers()
    model = entry.load_fn()(entry.resolved_source(), options=options)
    model.name = entry.name
    return model.freeze()


def _quiet_transformers() -> None:
    """No progress bars or info lines on stderr: the CLI's stderr carries errors only."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
