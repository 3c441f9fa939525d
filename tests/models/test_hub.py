"""Model dispatch by config.json architecture, hub-id recognition and the offline cache lookup
(no weights: config files only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from robustbench_mm.errors import WeightsError
from robustbench_mm.models import hub


def _dir(tmp_path: Path, name: str, config: dict | None = None, open_clip: bool = False) -> Path:
    d = tmp_path / name
    d.mkdir()
    if config is not None:
        (d / "config.json").write_text(json.dumps(config))
    if open_clip:
        (d / "open_clip_config.json").write_text("{}")
    return d


@pytest.mark.parametrize("arch,family,loader", [
    ("CLIPModel", "clip", hub.HF_CLIP),
    ("LlavaForConditionalGeneration", "llava", hub.LLAVA),
    ("Blip2ForConditionalGeneration", "blip2", hub.BLIP2),
])
def test_architecture_picks_the_adapter(tmp_path: Path, arch: str, family: str, loader: str) -> None:
    found = hub.locate_dir(_dir(tmp_path, "m", {"architectures": [arch], "model_type": "something-else"}))
    assert (found.family, found.loader) == (family, loader)


def test_open_clip_and_model_type_fallbacks(tmp_path: Path) -> None:
    assert hub.locate_dir(_dir(tmp_path, "oc", None, open_clip=True)).loader == hub.OPEN_CLIP
    # a repository with both files (laion's CLIP checkpoints): config.json's CLIPModel wins ...
    both = _dir(tmp_path, "both", {"architectures": ["CLIPModel"]}, open_clip=True)
    assert hub.locate_dir(both).loader == hub.HF_CLIP
    # ... unless the id says hf-hub: (open_clip)
    assert hub.classify_config("hf-hub:x/y", {"architectures": ["CLIPModel"]}, True, force_open_clip=True)[1] \
        == hub.OPEN_CLIP
    assert hub.locate_dir(_dir(tmp_path, "mt", {"model_type": "llava"})).family == "llava"


def test_unsupported_architecture_names_the_supported_ones(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="LlamaForCausalLM.*supported: CLIPModel"):
        hub.locate_dir(_dir(tmp_path, "llama", {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    with pytest.raises(WeightsError, match="no config.json"):
        hub.locate_dir(_dir(tmp_path, "empty"))


def test_hub_ids_and_offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    assert hub.looks_like_hub_id("openai/clip-vit-base-patch16") and hub.looks_like_hub_id("hf-hub:a/b")
    assert not hub.looks_like_hub_id("clip-tiny") and not hub.looks_like_hub_id("a/b/c")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    commit = "f" * 40
    snap = tmp_path / "hub" / "models--org--llava" / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps({"architectures": ["LlavaForConditionalGeneration"]}))
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text(commit)
    found = hub.locate_hub("org/llava")
    assert (found.family, found.revision) == ("llava", commit)
    with pytest.raises(WeightsError, match=r"hf download org/other --revision v2"):
        hub.locate_hub("org/other", "v2")
