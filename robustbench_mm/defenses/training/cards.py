"""``DEFENSE_CARD.md``: what a trained defense is, what it was trained on, what it measured."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_card(out: Path, record: dict[str, Any]) -> None:
    """``DEFENSE_CARD.md``: recipe, training time and the measured accuracy."""
    r = record["recipe"]
    params = "\n".join(f"- `{k}`: {v}" for k, v in sorted(r["params"].items()))
    estimate = record.get("bound_kind") == "estimate"

    def name(k: str) -> str:  # an estimated certificate is never called certified on its own
        return f"{k} (estimate, not certified)" if estimate and k.startswith("certified") else k

    metrics = "\n".join(f"- {name(k)}: **{v * 100:.2f}%**" if isinstance(v, float) and "accuracy" in k
                        else f"- {name(k)}: {v}" for k, v in record["metrics"].items())
    cert = f"\n## Certificate\n\n{record['certificate']}\n" if record.get("certificate") else ""
    env = record["environment"]
    data = record.get("training_data") or {}
    data_line = (f"Data record: split `{data.get('split')}`, {data.get('images')} images, sha256 `{data.get('sha256')}`."
                 if data else "")
    text = f"""# {record['defense']} on {r['model']}

Defended weights produced by `robustbench_mm.defenses` ({r['impl']}), recipe hash `{record['recipe_hash']}`
(base model revision `{r['model_revision']}`). Regenerate with
`mmrobust train --defense {record['defense']} --model {r['model']}` or `python scripts/train_defenses.py`.

## Recipe

{params}

Training data: Fashion-MNIST train split (60,000 images, Debian `dataset-fashion-mnist`), at the model's
resolution through `to_model_pixels`; batches drawn with replacement by a generator seeded per step.
{data_line}
{cert}
## Measured

Training time: {record['train_seconds'] / 60:.1f} min on {env['machine']} ({env['device']}, {env['threads']} threads,
torch {env['torch']}); written {record['written']}.

{metrics}
"""
    (out / "DEFENSE_CARD.md").write_text(text)
