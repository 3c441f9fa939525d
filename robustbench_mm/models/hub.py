"""Models named by a Hugging Face id or a local directory, dispatched on their ``config.json``.

``config.json``'s ``architectures`` decides the adapter (``CLIPModel``, ``LlavaForConditionalGeneration``,
``Blip2ForConditionalGeneration``); a directory or repository with only an ``open_clip_config.json`` (or an
id written ``hf-hub:owner/name``) is an open_clip model. Hub ids resolve from the local cache
(``HF_HOME``) first; the network is tried only when the hub is reachable and ``HF_HUB_OFFLINE`` is unset,
so an offline machine answers in milliseconds with the command that fetches the weights.
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

from robustbench_mm.errors import WeightsError

HF_CLIP = "robustbench_mm.models.clip:load_hf_clip"
OPEN_CLIP = "robustbench_mm.models.clip:load_open_clip"
LLAVA = "robustbench_mm.models.llava:load_llava"
BLIP2 = "robustbench_mm.models.blip2:load_blip2"

# config.json ``architectures`` (first match wins) and, for configs without it, ``model_type`` prefixes
ARCHITECTURES = {
    "CLIPModel": ("clip", HF_CLIP),
    "LlavaForConditionalGeneration": ("llava", LLAVA),
    "Blip2ForConditionalGeneration": ("blip2", BLIP2),
}
MODEL_TYPES = {"clip": ("clip", HF_CLIP), "llava": ("llava", LLAVA), "blip-2": ("blip2", BLIP2)}
_HUB_ID = re.compile(r"^(hf-hub:)?[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
# weight formats fetched from the hub: safetensors always, pickle formats only when allowed
SAFE_PATTERNS = ["*.json", "*.jinja", "*.txt", "*.model", "*.safetensors", "*.gz", "*.tiktoken"]
PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth"]


@dataclass(frozen=True)
class Located:
    """Where a model's files are and which adapter reads them.

    Attributes:
        family: ``clip``, ``llava`` or ``blip2``.
        loader: ``"module:function"`` of the adapter loader.
        revision: the hub commit the cache or download resolved to ("" for a local directory).
    """

    family: str
    loader: str
    revision: str = ""


def looks_like_hub_id(name: str) -> bool:
    """``owner/name`` or ``hf-hub:owner/name`` that is not an existing local path."""
    return bool(_HUB_ID.match(name)) and not Path(name).exists()


def is_model_dir(name: str) -> bool:
    path = Path(name)
    return path.is_dir() and ((path / "config.json").is_file() or (path / "open_clip_config.json").is_file())


def repo_of(name: str) -> str:
    return name.removeprefix("open_clip:").removeprefix("hf-hub:")


def classify_config(where: str, config: dict[str, object] | None, has_open_clip_config: bool,
                    force_open_clip: bool = False) -> tuple[str, str]:
    """``(family, loader)`` from a parsed config.json (None when absent) and the open_clip marker."""
    if force_open_clip or (config is None and has_open_clip_config):
        return "clip", OPEN_CLIP
    if config is None:
        raise WeightsError(f"{where}: no config.json or open_clip_config.json; not a model directory or repository")
    archs = config.get("architectures") or []
    for arch in archs if isinstance(archs, list) else []:
        if arch in ARCHITECTURES:
            return ARCHITECTURES[arch]
    model_type = str(config.get("model_type", ""))
    for prefix, found in MODEL_TYPES.items():
        if model_type.startswith(prefix):
            return found
    if has_open_clip_config:
        return "clip", OPEN_CLIP
    supported = ", ".join(ARCHITECTURES)
    raise WeightsError(f"{where}: architecture {archs or model_type!r} is not supported; "
                       f"supported: {supported}, or an open_clip model (hf-hub:owner/name)")


def locate_dir(path: Path) -> Located:
    cfg = path / "config.json"
    config = json.loads(cfg.read_text()) if cfg.is_file() else None
    family, loader = classify_config(str(path), config, (path / "open_clip_config.json").is_file())
    return Located(family, loader)


def offline() -> bool:
    """No hub access: ``HF_HUB_OFFLINE`` set, or the endpoint does not answer within 2 s."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return True
    return not _reachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))


@lru_cache(maxsize=4)
def _reachable(endpoint: str) -> bool:
    url = urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=2):
            return True
    except OSError:
        return False


def cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def missing_message(name: str, revision: str | None = None) -> str:
    repo = repo_of(name)
    rev, flag = (f" at revision {revision}", f" --revision {revision}") if revision else ("", "")
    return (f"weights for {name}{rev} are not in the Hugging Face cache ({cache_dir()}) and the hub is not "
            f"reachable; fetch them with `hf download {repo}{flag}` on a machine with network, or point HF_HOME "
            f"at a cache that holds them")


def _cached(repo: str, filename: str, revision: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(repo, filename, revision=revision)
    return hit if isinstance(hit, str) else None


def _snapshot_commit(path: str) -> str:
    """Commit of a cache snapshot file path ``.../snapshots/<commit>/<file>``."""
    parts = Path(path).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts else ""


def locate_hub(name: str, revision: str | None = None, *, allow_network: bool = True) -> Located:
    """Family, loader and resolved commit of a hub id, from the cache or (online) the hub."""
    repo = repo_of(name)
    force_open_clip = name.startswith(("hf-hub:", "open_clip:"))
    cfg = _cached(repo, "config.json", revision)
    oc = _cached(repo, "open_clip_config.json", revision)
    if cfg is None and oc is None:
        if not allow_network or offline():
            raise WeightsError(missing_message(name, revision))
        cfg, oc = _download_configs(repo, revision)
    config = json.loads(Path(cfg).read_text()) if cfg else None
    family, loader = classify_config(name, config, oc is not None, force_open_clip)
    return Located(family, loader, _snapshot_commit(cfg or oc or ""))


def _download_configs(repo: str, revision: str | None) -> tuple[str | None, str | None]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    found: list[str | None] = []
    for filename in ("config.json", "open_clip_config.json"):
        try:
            found.append(hf_hub_download(repo, filename, revision=revision))
        except EntryNotFoundError:
            found.append(None)
        except RepositoryNotFoundError:
            raise WeightsError(f"{repo} is not a model repository on the hub (or it is private: "
                               f"`hf auth login`)") from None
        except RevisionNotFoundError:
            raise WeightsError(f"--revision {revision!r} does not exist in {repo}") from None
    return found[0], found[1]


def snapshot(name: str, revision: str | None, allow_pickle: bool) -> str:
    """Local directory of the model's files: the cached snapshot, downloaded first when online."""
    from huggingface_hub import snapshot_download

    repo = repo_of(name)
    patterns = SAFE_PATTERNS + (PICKLE_PATTERNS if allow_pickle else [])
    local_only = offline()
    try:
        return str(snapshot_download(repo, revision=revision, allow_patterns=patterns, local_files_only=local_only))
    except Exception as exc:  # noqa: BLE001 - any hub/cache failure is a missing-weights error for the user
        if local_only:
            raise WeightsError(missing_message(name, revision)) from None
        raise WeightsError(f"could not download {repo}: {str(exc).splitlines()[0]}") from None
