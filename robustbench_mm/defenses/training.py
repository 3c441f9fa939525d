"""Shared machinery of the training defenses (MMCoA / TeCoA, top-K RS, CRMT).

A training defense produces new weights. ``apply(model)`` returns the model with trained
weights loaded from, in order: a shipped directory inside the package
(``robustbench_mm/defenses/weights/<defense>-<model>/``) whose recorded recipe hash matches, or
the cache ``$MMROBUST_CACHE/defenses/<hash>`` (default ``~/.cache/mmrobust``); if neither holds
finished weights it trains on demand (seeded, resumable). The recipe hash covers the defense
implementation, its preset parameters, the model name and the model's weight revision, so a
grid trains once and a retrained base model never silently reuses stale defended weights.

The loop is deterministic and resumable exactly: the batch indices and the attack's random
start of step ``t`` come from a generator seeded with ``(seed, t)``; a checkpoint holds the
trainable weights and every optimizer state (safetensors + JSON, no pickle) and the step.
Progress, loss and the final clean / robust accuracy are logged through ``logging``. On CUDA the
forward passes run under bf16 autocast. Finished weights are saved in the model's own format
(``save_pretrained(safe_serialization=True)`` for transformers CLIP, a safetensors state dict
for open_clip), with ``defense.json`` (recipe, hash, time, measured accuracy) and
``DEFENSE_CARD.md``.

Training data [BENCH]: the Fashion-MNIST *train* split from the Debian package
``dataset-fashion-mnist`` (``tasks.bundled.read_raw_fmnist``), preprocessed by
``to_model_pixels`` at the model's resolution. It is needed only when weights are trained;
the shipped weights make the package run without it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import shutil
import time
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustbench_mm.defenses.base import Defense
from robustbench_mm.errors import WeightsError
from robustbench_mm.presets import stable_hash

log = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).resolve().parent / "weights"
FORMAT_VERSION = 1  # bump when the on-disk layout or the loop's semantics change
DONE_FILE = "defense.json"


# ---- locations ------------------------------------------------------------------------------
def cache_root() -> Path:
    """``$MMROBUST_CACHE/defenses`` (default ``~/.cache/mmrobust/defenses``)."""
    return Path(os.environ.get("MMROBUST_CACHE", "~/.cache/mmrobust")).expanduser() / "defenses"


def finished(path: Path) -> bool:
    return (path / DONE_FILE).is_file() and json.loads((path / DONE_FILE).read_text()).get("status") == "done"


def recorded_hash(path: Path) -> str:
    f = path / DONE_FILE
    return str(json.loads(f.read_text()).get("recipe_hash", "")) if f.is_file() else ""


# ---- data -----------------------------------------------------------------------------------
@dataclass
class TrainData:
    """uint8 images ``[N,28,28]`` and int64 labels ``[N]`` (Fashion-MNIST train split)."""

    images: Tensor
    labels: Tensor


_DATA: dict[str, TrainData] = {}


def training_data() -> TrainData:
    """The Fashion-MNIST train split, cached per process; one clear error when it is absent."""
    if "fmnist" not in _DATA:
        from robustbench_mm.tasks.bundled import RAW_FMNIST_DIR, read_raw_fmnist

        try:
            images, labels = read_raw_fmnist("train")
        except OSError:
            raise WeightsError(
                f"training a defense needs the Fashion-MNIST train split ({RAW_FMNIST_DIR}, Debian package "
                f"dataset-fashion-mnist), which is missing; install it, or use a defense preset that ships "
                f"weights (robustbench_mm/defenses/weights/)"
            ) from None
        _DATA["fmnist"] = TrainData(torch.from_numpy(images), torch.from_numpy(labels))
    return _DATA["fmnist"]


def step_generator(seed: int, step: int) -> torch.Generator:
    """CPU generator of training step ``step``: what makes resuming exact."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))


def sample_batch(data: TrainData, batch_size: int, image_size: int, gen: torch.Generator,
                 device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """``(pixels [B,3,S,S] in [0,1], labels [B], indices [B])`` drawn with replacement."""
    from robustbench_mm.tasks.bundled import to_model_pixels

    idx = torch.randint(len(data.labels), (batch_size,), generator=gen)
    x = to_model_pixels(data.images[idx], image_size).to(device)
    return x, data.labels[idx].to(device), idx


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA; full precision on CPU (bf16 matmuls are slow there)."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / max(1, warmup)
    p = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))


# ---- checkpoints (safetensors + JSON, no pickle) ----------------------------------------------
def save_checkpoint(path: Path, module: nn.Module, optimizers: dict[str, torch.optim.Optimizer], step: int,
                    extra: dict[str, Any]) -> None:
    """Atomically write weights, optimizer states and the step to ``path``."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(unshared(module.state_dict()), str(tmp / "weights.safetensors"))
    tensors: dict[str, Tensor] = {}
    meta: dict[str, Any] = {"step": step, "extra": extra, "optimizers": {}}
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for pid, st in sd["state"].items():
            for k, v in st.items():
                if isinstance(v, Tensor):
                    tensors[f"{name}.{pid}.{k}"] = v.detach().contiguous().cpu()
                else:
                    scalars.setdefault(str(pid), {})[k] = v
        meta["optimizers"][name] = {"param_groups": sd["param_groups"], "scalars": scalars,
                                    "tensor_keys": sorted(k for k in tensors if k.startswith(name + "."))}
    save_file(tensors, str(tmp / "optim.safetensors"))
    (tmp / "state.json").write_text(json.dumps(meta, default=float))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def unshared(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """CPU copies safetensors accepts: tied weights (an LM head sharing the embedding) are stored
    twice rather than refused; ``load_state_dict`` ties them again."""
    out, seen = {}, set()
    for k, v in state.items():
        v = v.detach().contiguous().cpu()
        key = (v.data_ptr(), v.shape)
        out[k] = v.clone() if key in seen else v
        seen.add(key)
    return out


def load_checkpoint(path: Path, module: nn.Module, optimizers: dict[str, torch.optim.Optimizer]) -> tuple[int, dict[str, Any]]:
    """Restore what ``save_checkpoint`` wrote; returns ``(next step, extra)``."""
    from safetensors.torch import load_file

    device = next(module.parameters()).device
    module.load_state_dict(load_file(str(path / "weights.safetensors"), device=str(device)))
    meta = json.loads((path / "state.json").read_text())
    tensors = load_file(str(path / "optim.safetensors"), device=str(device))
    for name, opt in optimizers.items():
        om = meta["optimizers"][name]
        state: dict[int, dict[str, Any]] = {}
        for key in om["tensor_keys"]:
            _, pid, k = key.split(".", 2)
            state.setdefault(int(pid), {})[k] = tensors[key]
        for pid, st in om["scalars"].items():
            state.setdefault(int(pid), {}).update(st)
        opt.load_state_dict({"state": state, "param_groups": om["param_groups"]})
    return int(meta["step"]), dict(meta.get("extra", {}))


# ---- CLIP tower helpers (transformers CLIPModel and open_clip) -----------------------------------
@dataclass
class TextInput:
    """Tokenized prompts ``ids [T,L]``, ``mask [T,L]`` and an optional additive perturbation of the
    token embeddings ``delta [T,L,E]`` (the continuous text attack of MMCoA / CRMT [BENCH])."""

    ids: Tensor
    mask: Tensor
    delta: Tensor | None = None

    def with_delta(self, delta: Tensor | None) -> "TextInput":
        return TextInput(self.ids, self.mask, delta)


def is_hf(adapter: Any) -> bool:
    return hasattr(adapter.model, "text_model")


def token_embedding(adapter: Any) -> nn.Embedding:
    m = adapter.model
    return m.text_model.embeddings.token_embedding if is_hf(adapter) else m.token_embedding  # type: ignore[no-any-return]


def tokenize(adapter: Any, texts: Sequence[str]) -> TextInput:
    """Token ids the adapter's own ``_text_embed`` would use, on the adapter's device."""
    if is_hf(adapter):
        max_len = adapter.model.config.text_config.max_position_embeddings
        tok = adapter.tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        ids, mask = tok["input_ids"], tok["attention_mask"]
    else:
        ids = adapter.tokenizer(list(texts))
        mask = (ids != 0).long()
    return TextInput(ids.to(adapter.device), mask.to(adapter.device))


@contextlib.contextmanager
def embedding_offset(adapter: Any, delta: Tensor | None) -> Iterator[None]:
    """Add ``delta`` to the token-embedding output for the forwards inside the block."""
    if delta is None:
        yield
        return
    handle = token_embedding(adapter).register_forward_hook(lambda _m, _i, out: out + delta.to(out.dtype))
    try:
        yield
    finally:
        handle.remove()


def text_features(adapter: Any, text: TextInput) -> Tensor:
    """Projected (unnormalised) text embeddings ``[T,D]`` with gradients; ``text.delta`` applied."""
    with embedding_offset(adapter, text.delta):
        if is_hf(adapter):
            out = adapter.model.get_text_features(input_ids=text.ids, attention_mask=text.mask)
            return out if isinstance(out, Tensor) else out.pooler_output
        return adapter.model.encode_text(text.ids)  # type: ignore[no-any-return]


def image_features(adapter: Any, pixels: Tensor) -> Tensor:
    """Projected (unnormalised) image embeddings ``[B,D]`` with gradients (raw, undefended path)."""
    return adapter.raw_vision_features(pixels)  # type: ignore[no-any-return]


def mean_token_norm(adapter: Any) -> float:
    """Mean l2 norm of the token-embedding rows: the unit of relative text budgets."""
    return float(token_embedding(adapter).weight.detach().float().norm(dim=1).mean())


def tower_parameters(adapter: Any, towers: Sequence[str]) -> list[nn.Parameter]:
    """Parameters of the ``vision`` and/or ``text`` towers (logit scale stays frozen) [BENCH]."""
    m = adapter.model
    groups: dict[str, list[Any]] = {}
    if is_hf(adapter):
        groups = {"vision": [m.vision_model, m.visual_projection], "text": [m.text_model, m.text_projection]}
    else:
        text_mods = [m.transformer, m.token_embedding, m.ln_final]
        groups = {"vision": [m.visual], "text": text_mods}
    params: list[Any] = []
    for t in towers:
        for mod in groups[t]:
            params.extend(mod.parameters())
    if not is_hf(adapter) and "text" in towers:
        params += [p for p in (m.positional_embedding, m.text_projection) if isinstance(p, nn.Parameter)]
    return params


def save_clip_weights(adapter: Any, out: Path, source: str | None) -> None:
    """Save the underlying model in its own format, loadable with ``--model <out>``."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    if is_hf(adapter):
        adapter.model.save_pretrained(out, safe_serialization=True)
        adapter.tokenizer.save_pretrained(out)
    else:
        sd = {k: v.detach().contiguous().cpu() for k, v in adapter.model.state_dict().items()}
        save_file(sd, str(out / "open_clip_model.safetensors"))
    if source and Path(source).is_dir():
        for name in ("preprocessor_config.json", "open_clip_config.json"):
            if (Path(source) / name).exists():
                shutil.copy(Path(source) / name, out / name)


def load_clip_weights(adapter: Any, path: Path) -> None:
    """Load weights saved by ``save_clip_weights`` into an adapter of the same architecture."""
    from safetensors.torch import load_file

    name = "model.safetensors" if is_hf(adapter) else "open_clip_model.safetensors"
    sd = load_file(str(path / name), device=str(adapter.device))
    missing, unexpected = adapter.model.load_state_dict(sd, strict=False)
    buffers = {n for n, _ in adapter.model.named_buffers()}
    if unexpected or [k for k in missing if k not in buffers]:
        raise WeightsError(f"{path}: defended weights do not match model {adapter.name!r} "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]}); delete the directory to retrain")
    adapter.logit_scale_value = float(adapter.model.logit_scale.exp().item())


# ---- the training defense base class ------------------------------------------------------------
class TrainingDefense(Defense):
    """Base of the defenses that produce new weights; subclasses implement the step and export.

    Subclass constructors take keyword-only, annotated parameters (validated by presets) and call
    ``self._record(locals())``; those parameters, the model name and its revision form the recipe.
    Common parameters: ``steps``, ``batch_size``, ``lr``, ``seed``, ``ckpt_every``, ``log_every``,
    ``eval_n`` (bundled eval samples measured for the card).
    """

    families = frozenset({"clip"})
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
        if finished(shipped):
            if recorded_hash(shipped) == h:
                return shipped
            log.warning("%s: shipped weights %s were trained for another recipe or base-model revision; "
                        "using the cache", self.name, shipped)
        return cache_root() / h

    def train(self, model: Any, *, out: Path | None = None, resume: bool = True, force: bool = False
              ) -> dict[str, Any]:
        """``mmrobust train``: see ``train_command``."""
        return train_command(self, model, out=out, resume=resume, force=force)

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
                  "environment": {"machine": platform.machine(), "torch": torch.__version__,
                                  "threads": torch.get_num_threads(), "device": str(model.device)},
                  "written": time.strftime("%Y-%m-%d")}
        write_card(out, record)
        (out / DONE_FILE).write_text(json.dumps(record, indent=2, default=str))
        shutil.rmtree(out / "checkpoint", ignore_errors=True)
        log.info("%s: done in %.1f min; %s -> %s", self.name, record["train_seconds"] / 60,
                 " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)), out)
        return record


def write_card(out: Path, record: dict[str, Any]) -> None:
    """``DEFENSE_CARD.md``: recipe, training time and the measured accuracy."""
    r = record["recipe"]
    params = "\n".join(f"- `{k}`: {v}" for k, v in sorted(r["params"].items()))
    metrics = "\n".join(f"- {k}: **{v * 100:.2f}%**" if isinstance(v, float) and "accuracy" in k
                        else f"- {k}: {v}" for k, v in record["metrics"].items())
    env = record["environment"]
    text = f"""# {record['defense']} on {r['model']}

Defended weights produced by `robustbench_mm.defenses` ({r['impl']}), recipe hash `{record['recipe_hash']}`
(base model revision `{r['model_revision']}`). Regenerate with
`mmrobust train --defense {record['defense']} --model {r['model']}` or `python scripts/train_defenses.py`.

## Recipe

{params}

Training data: Fashion-MNIST train split (60,000 images, Debian `dataset-fashion-mnist`), at the model's
resolution through `to_model_pixels`; batches drawn with replacement by a generator seeded per step.

## Measured

Training time: {record['train_seconds'] / 60:.1f} min on {env['machine']} ({env['device']}, {env['threads']} threads,
torch {env['torch']}); written {record['written']}.

{metrics}
"""
    (out / "DEFENSE_CARD.md").write_text(text)


# ---- evaluation helpers shared by the cards ----------------------------------------------------
def zero_shot_eval(model: Any, *, n: int, eps: float, steps: int, seed: int = 0, batch_size: int = 100,
                   norm: str = "linf") -> dict[str, float]:
    """Clean and PGD robust zero-shot accuracy of ``model`` on ``n`` bundled eval images
    (task ``fmnist-zeroshot``, CE objective, step eps/4 for linf) [BENCH]."""
    from robustbench_mm.attacks.objectives import ClassifierObjective
    from robustbench_mm.attacks.pgd import PGD
    from robustbench_mm.tasks.bundled import FMNIST_CLASSES
    from robustbench_mm.tasks.zero_shot import ZeroShotClassification

    task = ZeroShotClassification(classes=tuple(FMNIST_CLASSES))
    task.name = "fmnist-zeroshot"
    prompts = task.class_prompts()
    attack = PGD(norm=norm, eps=eps, steps=steps)  # type: ignore[arg-type]
    clean = robust = total = 0
    for batch in task.examples(n=n, seed=seed, batch_size=batch_size, image_size=model.image_size):
        batch = batch.to(model.device)
        with torch.no_grad():
            ok = model.classify(batch.pixels, prompts).argmax(1) == batch.labels
        gen = torch.Generator().manual_seed(seed * 1_000_003 + int(batch.index[0]))
        adv = attack.perturb(model, batch, ClassifierObjective(prompts), generator=gen).pixels
        with torch.no_grad():
            ok_adv = (model.classify(adv, prompts).argmax(1) == batch.labels) & ok
        clean, robust, total = clean + int(ok.sum()), robust + int(ok_adv.sum()), total + len(batch)
    return {"clean_accuracy": clean / total, "robust_accuracy": robust / total, "n": float(total)}


def zero_shot_logits(adapter: Any, pixels: Tensor, class_text: TextInput) -> Tensor:
    """``s * cos(f_I(x), g_T(t_c))`` with gradients through both towers ``[B,C]``."""
    img = F.normalize(image_features(adapter, pixels).float(), dim=-1)
    txt = F.normalize(text_features(adapter, class_text).float(), dim=-1)
    return adapter.logit_scale_value * img @ txt.T


def model_source(model: Any) -> str | None:
    """Local directory the model was loaded from (to copy its preprocessing config), if any."""
    try:
        from robustbench_mm.models.zoo import entry_for

        return entry_for(model.name).resolved_source()
    except Exception:  # noqa: BLE001 - a model built in memory has no source
        return None


class ClipFinetuneDefense(TrainingDefense):
    """Adversarial fine-tuning of CLIP towers (MMCoA, TeCoA, top-K RS); AdamW + cosine schedule.

    Subclasses set ``towers`` (which towers train) and implement ``train_step``; the trained
    model is saved in its own format (``--model <weights dir>`` loads it like any checkpoint).
    """

    towers: tuple[str, ...] = ("vision",)
    lr: float
    weight_decay: float
    warmup: int = 0

    def prepare(self, model: Any) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in tower_parameters(model, self.towers):
            p.requires_grad_(True)
        return model.model  # type: ignore[no-any-return]

    def optimizers(self, module: nn.Module, model: Any) -> dict[str, torch.optim.Optimizer]:
        params = [p for p in module.parameters() if p.requires_grad]
        return {"main": torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)}

    def lr_at(self, step: int, phase: str) -> float | None:
        return cosine_lr(step, self.steps, self.lr, self.warmup)

    def export(self, model: Any, module: nn.Module, out: Path) -> None:
        save_clip_weights(model, out, model_source(model))

    def load_trained(self, model: Any, path: Path) -> Any:
        load_clip_weights(model, path)
        base = getattr(model, "revision", "")
        model.revision = f"{base}+{self.name}:{recorded_hash(path)[:8]}"
        model._text_cache.clear()
        return model.freeze()


def train_command(defense: TrainingDefense, model: Any, *, out: Path | None = None, resume: bool = True,
                  force: bool = False) -> dict[str, Any]:
    """What ``mmrobust train`` does for a training defense: train into ``out`` (default: the cache
    directory of the recipe), resuming a checkpoint; finished weights are reused unless ``force``."""
    path = Path(out) if out else cache_root() / defense.recipe_hash(model)
    if not force:
        existing = defense.weights_dir(model) if out is None else path
        if finished(existing) and recorded_hash(existing) == defense.recipe_hash(model):
            record = json.loads((existing / DONE_FILE).read_text())
            return record | {"path": str(existing), "reused": True}
    if force or (finished(path) and recorded_hash(path) != defense.recipe_hash(model)):
        log.info("%s: %s holds weights of another recipe or base-model revision; retraining", defense.name, path)
        shutil.rmtree(path / "checkpoint", ignore_errors=True)
        (path / DONE_FILE).unlink(missing_ok=True)
    return defense.fit(model, path, resume=resume) | {"path": str(path), "reused": False}
