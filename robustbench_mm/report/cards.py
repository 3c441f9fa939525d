"""Model and defense cards of a release: one small page each, linked from every table row.

A bundled model's card is its ``MODEL_CARD.md``; another model shows where it was loaded from. A
defense card shows the preset file (parameters with the comments that say why) and its paper.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment

from robustbench_mm.report.entries import Board, paper_of

log = logging.getLogger(__name__)


def model_card(name: str) -> tuple[str, str]:
    """``(source, card text)`` of a model without loading weights; empty strings when unknown."""
    if " + " in name:  # "<vlm> + <encoder>": the VLM's card, with the swapped tower said first
        vlm, encoder = name.split(" + ", 1)
        source, text = model_card(vlm)
        return source, (f"Vision tower replaced by the CLIP image encoder `{encoder}` "
                        f"(`--vision-encoder {encoder}`).\n\n{text}")
    try:
        from robustbench_mm.models.zoo import entry_for, resolve_model_name

        entry = entry_for(resolve_model_name(name))
    except Exception:  # noqa: BLE001 - a name from a store need not be registered on this machine
        return "", ""
    source = str(entry.resolved_source())
    card = Path(source) / "MODEL_CARD.md" if entry.bundled else None
    text = card.read_text() if card is not None and card.is_file() else ""
    return (entry.source if entry.bundled else source), text


def defense_card(name: str, config: dict[str, Any]) -> str:
    """The preset YAML of a defense, or the resolved config the cell recorded."""
    try:
        from robustbench_mm.presets import find_preset

        return Path(find_preset("defense", name)).read_text()
    except Exception:  # noqa: BLE001 - a preset from a YAML path may not exist here
        return json.dumps(config, indent=2, sort_keys=True) if config else ""


def write_cards(env: Environment, base: dict[str, Any], entries: pd.DataFrame, board: Board, root: Path) -> None:
    template = env.get_template("card.html.j2")
    for model, target in sorted(set(zip(entries["model"], entries["model_card"]))):
        source, text = model_card(model)
        (root / target).write_text(template.render(**base, kind="model", name=model, source=source, text=text,
                                                   paper={}))
    configs = {c.row["defense"]: (c.meta.get("config") or {}).get("defense") or {} for c in board.cells.values()}
    for defense, target in sorted(set(zip(entries["defense"], entries["defense_card"]))):
        config = configs.get(defense, {})
        (root / target).write_text(template.render(
            **base, kind="defense", name=defense, source="", text=defense_card(defense, config),
            paper=paper_of(defense, str(config.get("impl", "")))))
