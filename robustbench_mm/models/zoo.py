"""Model registry: real checkpoints (Hugging Face ids / open_clip tags) and the bundled tiny zoo.

A model entry binds a name to an adapter loader and a source. The bundled models load through
exactly the same loaders as the real ones (``from_pretrained`` on a local directory).
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from robustbench_mm.errors import UnknownNameError, WeightsError
from robustbench_mm.models import hub
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
    revision: str = ""  # hub commit the cache resolved to (recorded per row; part of the cell id)

    def resolved_source(self) -> str:
        return str(ZOO_DIR / self.source) if self.bundled else self.source

    def is_hub(self) -> bool:
        return not self.bundled and not Path(self.resolved_source()).exists() and \
            (self.source.startswith("open_clip:hf-hub:") or not self.source.startswith("open_clip:"))

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
            return self.revision
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

_HF_CLIP, _OPEN_CLIP, _LLAVA, _BLIP2 = hub.HF_CLIP, hub.OPEN_CLIP, hub.LLAVA, hub.BLIP2

_ENTRIES = [
    # bundled zoo: trained on Fashion-MNIST by scripts/train_zoo.py, see each MODEL_CARD.md
    ModelEntry("clip-tiny", "clip", _HF_CLIP, "clip-tiny", bundled=True),
    ModelEntry("openclip-tiny", "clip", _OPEN_CLIP, "openclip-tiny", bundled=True),
    ModelEntry("llava-tiny", "llava", _LLAVA, "llava-tiny", bundled=True),
    ModelEntry("blip2-tiny", "blip2", _BLIP2, "blip2-tiny", bundled=True),
    # clip-tiny fine-tuned on per-image attribute captions (scripts/train_caption_clip.py), for
    # fmnist-captions-retrieval: a text tower that reads words besides the class name
    ModelEntry("clip-tiny-captions", "clip", _HF_CLIP, "clip-tiny-captions", bundled=True),
    # real checkpoints
    ModelEntry("clip-vit-b-32", "clip", _HF_CLIP, "openai/clip-vit-base-patch32", params=151_000_000),
    ModelEntry("clip-vit-l-14", "clip", _HF_CLIP, "openai/clip-vit-large-patch14", params=428_000_000),
    ModelEntry("clip-vit-l-14-336", "clip", _HF_CLIP, "openai/clip-vit-large-patch14-336", params=428_000_000),
    ModelEntry("openclip-vit-b-32-laion2b", "clip", _OPEN_CLIP, "open_clip:ViT-B-32:laion2b_s34b_b79k", params=151_000_000),
    ModelEntry("tecoa-vit-l-14", "clip", _OPEN_CLIP, "open_clip:hf-hub:chs20/tecoa4-clip", params=428_000_000),
    ModelEntry("fare-vit-l-14", "clip", _OPEN_CLIP, "open_clip:hf-hub:chs20/fare4-clip", params=428_000_000),
    # the same robust encoders under their --vision-encoder preset names (zero-shot evaluation)
    ModelEntry("fare2-vit-l-14", "clip", _OPEN_CLIP, "open_clip:hf-hub:chs20/fare2-clip", params=428_000_000),
    ModelEntry("fare4-vit-l-14", "clip", _OPEN_CLIP, "open_clip:hf-hub:chs20/fare4-clip", params=428_000_000),
    ModelEntry("tecoa2-vit-l-14", "clip", _OPEN_CLIP, "open_clip:hf-hub:chs20/tecoa2-clip", params=428_000_000),
    ModelEntry("tecoa4-vit-l-14", "clip", _OPEN_CLIP, "open_clip:hf-hub:chs20/tecoa4-clip", params=428_000_000),
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
        log.warning("--model %s: weights of %s are not in the local cache; running the bundled %s instead "
                    "(rows and progress say %s)", name, real, tiny, tiny)
        return tiny
    if name in MODELS or _is_local_model_dir(name) or hub.is_model_dir(name) or hub.looks_like_hub_id(name):
        return name
    available = MODELS.names() + sorted(ALIASES)
    raise UnknownNameError(unknown_name_message("model", name, available)
                           + " A model can also be a local directory with a config.json or a Hugging Face id "
                           "owner/name.")


def _is_local_model_dir(name: str) -> bool:
    return (os.sep in name or name.startswith(".")) and Path(name).is_dir()


def entry_for(name: str, revision: str | None = None) -> ModelEntry:
    """Registry entry for a name, an ad-hoc entry for a local model directory, or a hub id's entry
    (family from its config.json ``architectures``; resolved commit in ``revision``).

    Raises ``WeightsError`` (naming ``hf download``/``HF_HOME``) when a hub model is neither cached
    nor downloadable; reads at most the config, never weights.
    """
    if name in MODELS:
        entry = MODELS.get(name)
        if entry.is_hub():
            found = hub.locate_hub(entry.source, revision)
            entry = replace(entry, revision=found.revision)
        return entry
    if Path(name).is_dir():
        path = Path(name).resolve()
        found = hub.locate_dir(path)
        return ModelEntry(str(path), found.family, found.loader, str(path))
    found = hub.locate_hub(name, revision)
    source = f"open_clip:hf-hub:{hub.repo_of(name)}" if found.loader == _OPEN_CLIP else name
    return ModelEntry(name, found.family, found.loader, source, revision=found.revision)


@dataclass(frozen=True)
class LoadOptions:
    """How weights load. ``dtype`` is the load precision (``--load-dtype``), not the attack's search
    precision; ``revision`` pins a hub commit/branch/tag; ``device_map="auto"`` lets accelerate place
    a large model (7B+) across devices instead of moving it to ``device``."""

    device: str = "cpu"
    dtype: str = "fp32"
    allow_pickle: bool = False
    trust_remote_code: bool = False
    revision: str | None = None
    device_map: str | None = None


def check_available(entry: ModelEntry) -> None:
    """Raise ``WeightsError`` naming how to get the weights when they are not present."""
    if entry.available():
        return
    if entry.is_hub():
        raise WeightsError(hub.missing_message(entry.source.removeprefix("open_clip:")))
    fallback = ALIASES.get(entry.family, ("", "clip-tiny"))[1]
    raise WeightsError(f"weights for {entry.name} not found at {entry.resolved_source()} (open_clip pretrained "
                       f"tags download on first use, which needs network); use the bundled --model {fallback}")


def load_model(name: str, options: LoadOptions | None = None) -> Any:
    """Load a model by registry name, alias, local directory or hub id; returns a frozen VLM whose
    ``name`` is the model actually loaded and ``revision`` the hub commit (or weights hash)."""
    options = options or LoadOptions()
    entry = entry_for(resolve_model_name(name), options.revision)
    _quiet_transformers()
    source = entry.resolved_source()
    if entry.is_hub() and not entry.source.startswith("open_clip:hf-hub:"):
        source = hub.snapshot(entry.source, entry.revision or options.revision, options.allow_pickle)
    elif entry.source.startswith("open_clip:hf-hub:") and entry.revision:
        source = hub.snapshot(entry.source, entry.revision, options.allow_pickle)
    elif not entry.is_hub() and not entry.bundled and not Path(source).exists() and not \
            source.startswith("open_clip:"):
        check_available(entry)
    model = entry.load_fn()(source, options=options)
    model.name = entry.name
    if entry.revision:
        model.revision = entry.revision
    return model.freeze()


def _quiet_transformers() -> None:
    """No progress bars or info lines on stderr: the CLI's stderr carries errors only."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
