"""``TrainingDefense``: the seeded, resumable training loop every training defense shares."""

from __future__ import annotations

import json
import logging
import platform
import shutil
import time
from abc import abstractmethod
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robustbench_mm.defenses.base import Defense
from robustbench_mm.defenses.training.cards import write_card
from robustbench_mm.defenses.training.checkpoints import load_checkpoint, save_checkpoint
from robustbench_mm.defenses.training.data import sample_batch, step_generator, training_data
from robustbench_mm.defenses.training.paths import DONE_FILE, FORMAT_VERSION, SHIPPED_DIR, cache_root, finished, recorded_hash
from robustbench_mm.defenses.training.schedule import autocast
from robustbench_mm.presets import stable_hash

log = logging.getLogger(__name__)


class TrainingDefense(Defense):
    """Base of the defenses that produce new weights; subclasses implement the step and export.

    Subclass constructors take keyword-only, annotated parameters (validated by presets) and call
    ``self._record(locals())``; those parameters, the model name and its revision form the recipe.
    Common parameters: ``steps``, ``batch_size``, ``lr``, ``seed``, ``ckpt_every``, ``log_every``,
    ``eval_n`` (bundled eval samples measured for the card).
    """

    families = frozenset({"clip"})
    bound_kind = "sound"  # of the certificate, if the defense has one (``sound`` | ``estimate``)
    certificate_note = ""  # what the certificate rests on, for the card ("" = no certificate)
    params: dict[str, Any]
    steps: int
    batch_size: int
    seed: int
    ckpt_every: int
    log_every: int
    eval_n: int

    def _record(self, kwargs: dict[str, Any]) -> None:
        self.params = {k: v for k, v in kwargs.items() if k not in ("self", "__class__")}
        for k, v in self.params.items():
            setattr(self, k, v)

    # -- recipe and location --
    def recipe(self, model: Any) -> dict[str, Any]:
        return {"impl": type(self).__name__, "format": FORMAT_VERSION, "params": self.params,
                "model": getattr(model, "name", ""), "model_revision": getattr(model, "revision", "")}

    def recipe_hash(self, model: Any) -> str:
        return stable_hash(self.recipe(model))

    def shipped_dir(self, model: Any) -> Path:
        return SHIPPED_DIR / f"{self.name}-{getattr(model, 'name', '')}"

    def weights_dir(self, model: Any) -> Path:
        """The shipped directory when its recipe hash matches, else the cache directory."""
        h = self.recipe_hash(model)
        shipped = self.shipped_dir(model)
        if finished(shipped) and recorded_hash(shipped) == h:
            return shipped
        # the same recipe shipped under another preset name (``--defense fare --eps 2/255`` is fare2)
        for other in sorted(SHIPPED_DIR.glob(f"*-{getattr(model, 'name', '')}")):
            if other != shipped and finished(other) and recorded_hash(other) == h:
                return other
        if finished(shipped):
            log.warning("%s: shipped weights %s were trained for another recipe or base-model revision; "
                        "using the cache", self.name, shipped)
        return cache_root() / h

    def train(self, model: Any, *, out: Path | None = None, resume: bool = True, force: bool = False
              ) -> dict[str, Any]:
        """``mmrobust train``: train into ``out`` (default: the cache directory of the recipe),
        resuming a checkpoint; finished weights are reused unless ``force``."""
        path = Path(out) if out else cache_root() / self.recipe_hash(model)
        if not force:
            existing = self.weights_dir(model) if out is None else path
            if finished(existing) and recorded_hash(existing) == self.recipe_hash(model):
                record = json.loads((existing / DONE_FILE).read_text())
                return record | {"path": str(existing), "reused": True}
        if force or (finished(path) and recorded_hash(path) != self.recipe_hash(model)):
            log.info("%s: %s holds weights of another recipe or base-model revision; retraining", self.name, path)
            shutil.rmtree(path / "checkpoint", ignore_errors=True)
            (path / DONE_FILE).unlink(missing_ok=True)
        return self.fit(model, path, resume=resume) | {"path": str(path), "reused": False}

    def apply(self, model: Any) -> Any:
        path = self.weights_dir(model)
        if not finished(path):
            log.warning("%s: no trained weights for %s at %s; training now (seeded, resumable)",
                        self.name, getattr(model, "name", ""), path)
            self.fit(model, path)
        return self.load_trained(model, path)

    # -- hooks for subclasses --
    def phase(self, step: int) -> str:
        """Name of the optimizer used at ``step`` (several for multi-stage recipes)."""
        return "main"

    def total_steps(self) -> int:
        return self.steps

    @abstractmethod
    def prepare(self, model: Any) -> nn.Module:
        """Set up trainable parameters; return the module whose state is checkpointed."""

    @abstractmethod
    def optimizers(self, module: nn.Module, model: Any) -> dict[str, torch.optim.Optimizer]:
        """One optimizer per phase name."""

    @abstractmethod
    def train_step(self, model: Any, module: nn.Module, x: Tensor, y: Tensor, step: int,
                   gen: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        """Loss to minimise at ``step`` (a scalar with gradients) and readouts for the log."""

    def lr_at(self, step: int, phase: str) -> float | None:
        """Learning rate of ``phase`` at ``step`` (None keeps the optimizer's)."""
        return None

    @abstractmethod
    def measure(self, model: Any, module: nn.Module) -> dict[str, float]:
        """Clean and robust accuracy for the card (bundled eval slice)."""

    @abstractmethod
    def export(self, model: Any, module: nn.Module, out: Path) -> None:
        """Write the trained weights in the model's own format into ``out``."""

    @abstractmethod
    def load_trained(self, model: Any, path: Path) -> Any:
        """The defended model with the weights of ``path`` loaded (frozen, eval mode)."""

    # -- the loop --
    def fit(self, model: Any, out: Path, *, resume: bool = True, stop_after: int | None = None) -> dict[str, Any]:
        """Train into ``out`` (resuming from ``out/checkpoint``); ``stop_after`` ends early after that
        many total steps without exporting (for tests and interrupted runs)."""
        out.mkdir(parents=True, exist_ok=True)
        data = training_data()
        module = self.prepare(model)
        opts = self.optimizers(module, model)
        ckpt, start, extra = out / "checkpoint", 0, {"losses": []}
        if resume and (ckpt / "state.json").exists():
            start, extra = load_checkpoint(ckpt, module, opts)
            log.info("%s: resuming at step %d from %s", self.name, start, ckpt)
        t0, total, device = time.time(), self.total_steps(), model.device
        model.train()
        for step in range(start, total):
            gen = step_generator(self.seed, step)
            x, y, _ = sample_batch(data, self.batch_size, model.image_size, gen, device)
            phase = self.phase(step)
            lr = self.lr_at(step, phase)
            if lr is not None:
                for g in opts[phase].param_groups:
                    g["lr"] = lr
            with autocast(device):
                loss, info = self.train_step(model, module, x, y, step, gen)
            opts[phase].zero_grad(set_to_none=True)
            loss.float().backward()
            opts[phase].step()
            extra["losses"].append(float(loss.detach()))
            if (step + 1) % self.log_every == 0 or step == start:
                readout = " ".join(f"{k}={v:.4f}" for k, v in info.items())
                log.info("%s step %d/%d (%s) loss=%.4f %s %.1fs", self.name, step + 1, total, phase,
                         float(loss.detach()), readout, time.time() - t0)
            if (step + 1) % self.ckpt_every == 0 or step + 1 == total or (stop_after and step + 1 >= stop_after):
                extra["train_seconds"] = extra.get("train_seconds", 0.0) + time.time() - t0
                t0 = time.time()
                save_checkpoint(ckpt, module, opts, step + 1, extra)
            if stop_after is not None and step + 1 >= stop_after:
                model.eval()
                return {"step": step + 1, "losses": extra["losses"]}
        model.eval()
        return self._finish(model, module, out, extra)

    def _finish(self, model: Any, module: nn.Module, out: Path, extra: dict[str, Any]) -> dict[str, Any]:
        t0 = time.time()
        metrics = self.measure(model, module)
        self.export(model, module, out)
        record = {"status": "done", "defense": self.name, "recipe_hash": self.recipe_hash(model),
                  "recipe": self.recipe(model), "train_seconds": extra.get("train_seconds", 0.0),
                  "measure_seconds": time.time() - t0, "metrics": metrics,
                  "final_loss": extra["losses"][-1] if extra["losses"] else None,
                  "training_data": training_data().record,
                  **({"bound_kind": self.bound_kind, "certificate": self.certificate_note}
                     if self.certificate_note else {}),
                  "environment": {"machine": platform.machine(), "torch": torch.__version__,
                                  "threads": torch.get_num_threads(), "device": str(model.device)},
                  "written": time.strftime("%Y-%m-%d")}
        write_card(out, record)
        (out / DONE_FILE).write_text(json.dumps(record, indent=2, default=str))
        shutil.rmtree(out / "checkpoint", ignore_errors=True)
        log.info("%s: done in %.1f min; %s -> %s", self.name, record["train_seconds"] / 60,
                 " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)), out)
        return record
