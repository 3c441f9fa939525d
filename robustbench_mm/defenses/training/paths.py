"""Where trained weights live: shipped inside the package, else the user cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "weights"
FORMAT_VERSION = 1  # bump when the on-disk layout or the loop's semantics change
DONE_FILE = "defense.json"



def cache_root() -> Path:
    """``$MMROBUST_CACHE/defenses`` (default ``~/.cache/mmrobust/defenses``)."""
    return Path(os.environ.get("MMROBUST_CACHE", "~/.cache/mmrobust")).expanduser() / "defenses"


def finished(path: Path) -> bool:
    return (path / DONE_FILE).is_file() and json.loads((path / DONE_FILE).read_text()).get("status") == "done"


def recorded_hash(path: Path) -> str:
    f = path / DONE_FILE
    return str(json.loads(f.read_text()).get("recipe_hash", "")) if f.is_file() else ""
