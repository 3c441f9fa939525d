"""PSM plug-in (docs/methods.md): Purifier P before the frozen encoder, Smoothness Mapper M after.

[BENCH] substitutions, documented in defenses/fs-psm.yaml:
  * P is a small noise-conditioned residual conv denoiser trained with MSE to the clean image
    (the bundled zoo has no diffusion model; 2.7 allows "trained rather than off the shelf"), then
    fine-tuned jointly with M on the feature-consistency loss (2.7 "optionally fine-tuned").
  * M is a residual MLP with FiLM(sigma) modulation and a zero-initialised last layer, applied per
    visual token (CLIP: one token), so M = identity at step 0 (2.12).
Neither touches the model's weights. The certificate covers the composite encoder unchanged.

Training data: the Fashion-MNIST *train* split (Debian dataset-fashion-mnist) only; without it
training stops with one line naming the package (``data.py``). ``psm.json`` records the data used.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustbench_mm.defenses.fs_psm.data import psm_training_data, require_train_split
from robustbench_mm.presets import stable_hash

log = logging.getLogger(__name__)
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
FORMAT_VERSION = 1


class FiLM(nn.Module):
    """``gamma(sigma) * a + beta(sigma)``; identity at init (gamma = 1, beta = 0)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(2, 2 * width)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, a: Tensor, sigma: float) -> Tensor:
        s = torch.tensor([sigma, math.log(sigma)], device=a.device, dtype=a.dtype)
        gamma, beta = self.proj(s).chunk(2, dim=-1)
        return (1 + gamma) * a + beta


class SmoothnessMapper(nn.Module):
    """``M(h) = h + R(h, sigma)`` on per-token features ``[..., D]``; R's last layer is zero-init."""

    def __init__(self, dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.inp, self.mid, self.out = nn.Linear(dim, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, dim)
        self.film1, self.film2 = FiLM(hidden), FiLM(hidden)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: Tensor, sigma: float) -> Tensor:
        a = F.gelu(self.film1(self.inp(h), sigma))
        a = F.gelu(self.film2(self.mid(a), sigma))
        return h + self.out(a)


class Purifier(nn.Module):
    """Noise-conditioned residual conv denoiser: ``P(x', sigma) = x' + D([x', sigma], sigma)`` on [B,C,H,W]."""

    def __init__(self, channels: int = 3, width: int = 32, depth: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels + 1, width, 3, padding=1), nn.GELU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.GELU()]
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, sigma: float) -> Tensor:
        s = torch.full_like(x[:, :1], sigma)
        # channels-last runs these narrow convs ~1.5x faster on CPU (same math); the purifier sees
        # every noisy copy of every forward, so it dominates FS-PSM's attack cost
        inp = torch.cat([x, s], dim=1).contiguous(memory_format=torch.channels_last)
        return x + self.net(inp).contiguous()


class PSM(nn.Module):
    """Purifier + Smoothness Mapper behind the smoothing ``Plugin`` protocol.

    ``map`` takes raw encoder features ``[B,D]`` or ``[B,N,D]``, maps each token of the unit-normalised
    flattened feature (scaled by sqrt(N) so tokens have unit average norm) and returns features of
    the raw shape and magnitude (identity at init, so LM consumers keep their input scale).
    """

    def __init__(self, channels: int, feat_dim: int, hidden: int = 256, purifier_width: int = 32,
                 use_purifier: bool = True) -> None:
        super().__init__()
        self.purifier = Purifier(channels, purifier_width) if use_purifier else None
        self.mapper = SmoothnessMapper(feat_dim, hidden)

    def purify(self, pixels: Tensor, sigma: float) -> Tensor:
        return pixels if self.purifier is None else self.purifier(pixels, sigma)

    def map(self, feats: Tensor, sigma: float) -> Tensor:
        b, shape = feats.shape[0], feats.shape[1:]
        tokens = feats.reshape(b, -1, shape[-1]).float()
        norm = tokens.flatten(1).norm(dim=1).clamp_min(1e-12).view(b, 1, 1)
        scale = math.sqrt(tokens.shape[1])
        h = tokens / norm * scale
        return (self.mapper(h, sigma) * norm / scale).reshape(b, *shape).to(feats.dtype)


@dataclass(frozen=True)
class PSMTrainConfig:
    """Hyper-parameters of the 2.12 loop [BENCH]; hashed (with the model revision) into the cache key."""

    sigmas: tuple[float, ...] = (0.25, 0.5)
    purifier_steps: int = 150
    mapper_steps: int = 200
    batch_size: int = 32
    lr: float = 1e-3
    lambda_u: float = 1.0
    hidden: int = 256
    purifier_width: int = 32
    use_purifier: bool = True
    finetune_purifier: bool = True
    seed: int = 0
    train_images: int = 20000


@dataclass
class PSMState:
    """Where a trained PSM lives and what it measured (``metrics``: S before/after on held-out images)."""

    key: str
    path: Path
    metrics: dict[str, Any] = field(default_factory=dict)


def cache_key(model: Any, cfg: PSMTrainConfig) -> str:
    return stable_hash({"format": FORMAT_VERSION, "model": getattr(model, "name", ""),
                        "revision": getattr(model, "revision", ""), "config": asdict(cfg)})


def cache_dirs(model_name: str, key: str) -> list[Path]:
    """Shipped weights first, then the user cache ``$MMROBUST_CACHE/defenses`` (``~/.cache/mmrobust``)."""
    root = Path(os.environ.get("MMROBUST_CACHE", "~/.cache/mmrobust")).expanduser() / "defenses"
    safe = model_name.replace("/", "_") or "model"
    return [WEIGHTS_DIR / safe, root / f"fs-psm-{safe}-{key}"]


def build_psm(model: Any, cfg: PSMTrainConfig) -> PSM:
    """A fresh (identity) PSM sized for ``model``'s features."""
    size = model.image_size
    with torch.no_grad():
        probe = model.raw_vision_features(torch.zeros(1, 3, size, size, device=model.device))
    return PSM(3, int(probe.shape[-1]), cfg.hidden, cfg.purifier_width, cfg.use_purifier).to(model.device)


def find_weights(model: Any, key: str, extra: Path | None = None) -> Path | None:
    """First directory (``extra``, shipped, cache) holding finished PSM weights recorded under ``key``."""
    for d in ([extra] if extra else []) + cache_dirs(model.name, key):
        meta = d / "psm.json"
        if meta.exists() and (d / "psm.safetensors").exists():
            if json.loads(meta.read_text()).get("key") == key:
                return d
            log.warning("PSM weights in %s were trained for another config or model revision; not used", d)
    return None


def load_psm(model: Any, cfg: PSMTrainConfig, path: Path) -> tuple[PSM, PSMState]:
    from safetensors.torch import load_file

    psm = build_psm(model, cfg)
    psm.load_state_dict(load_file(str(path / "psm.safetensors"), device=str(model.device)))
    meta = json.loads((path / "psm.json").read_text())
    return psm.eval().requires_grad_(False), PSMState(meta["key"], path, meta.get("metrics", {}))


def train_into(model: Any, cfg: PSMTrainConfig, out: Path, *, resume: bool = True) -> tuple[PSM, PSMState]:
    """Train (resuming ``out/ckpt.safetensors`` unless ``resume`` is False) and save to ``out``."""
    key = cache_key(model, cfg)
    if not resume:
        (out / "ckpt.safetensors").unlink(missing_ok=True)
    psm = build_psm(model, cfg)
    metrics = train_psm(model, psm, cfg, out)
    save_psm(psm, out, key, cfg, model, metrics)
    return psm.eval().requires_grad_(False), PSMState(key, out, metrics)


def load_or_train(model: Any, cfg: PSMTrainConfig, *, train_if_missing: bool = True) -> tuple[PSM, PSMState]:
    """The PSM for ``model``: shipped or cached weights whose key matches, else trained (resumable)."""
    key = cache_key(model, cfg)
    found = find_weights(model, key)
    if found is not None:
        return load_psm(model, cfg, found)
    if not train_if_missing:
        raise FileNotFoundError(f"no PSM weights with key {key} for {model.name} (revision {model.revision}); "
                                f"run `mmrobust train --defense fs-psm --model {model.name}`")
    require_train_split()  # one line naming the package; never falls back to the evaluation slice
    log.warning("no PSM weights for %s; training now (seeded, resumable)", model.name)
    return train_into(model, cfg, cache_dirs(model.name, key)[1])


def save_psm(psm: PSM, out: Path, key: str, cfg: PSMTrainConfig, model: Any, metrics: dict[str, Any]) -> None:
    """Atomic write of ``psm.safetensors`` + ``psm.json`` (key, config, model revision, metrics)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "psm.safetensors.tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in psm.state_dict().items()}, str(tmp))
    tmp.replace(out / "psm.safetensors")
    meta = {"key": key, "format": FORMAT_VERSION, "model": model.name, "model_revision": model.revision,
            "config": asdict(cfg), "training_data": metrics.get("training_data"),
            "metrics": {k: v for k, v in metrics.items() if k != "training_data"}}
    (out / "psm.json.tmp").write_text(json.dumps(meta, indent=2, default=str))
    (out / "psm.json.tmp").replace(out / "psm.json")


# ---- training (2.12) ------------------------------------------------------------------------------
def _unit(feats: Tensor) -> Tensor:
    return F.normalize(feats.flatten(1).float(), dim=-1)


def score(model: Any, psm: PSM | None, x: Tensor, sigma: float, n: int, gen: torch.Generator) -> float:
    """Mean MC Gaussian robustness score ``S_hat = ||mean_j f_e(x + sigma z_j)||`` over ``x``."""
    from robustbench_mm.defenses.fs_psm.smoothing import composite_encoder, smooth_features

    enc = composite_encoder(model.raw_vision_features, sigma, psm)
    with torch.no_grad():
        return float(smooth_features(enc, x, sigma, n, gen, chunk=1024)[0].s_hat.mean())


def train_psm(model: Any, psm: PSM, cfg: PSMTrainConfig, ckpt_dir: Path) -> dict[str, Any]:
    """Stage 1: purifier MSE; stage 2: mapper (+ purifier) consistency + identity loss. Resumable."""
    start = time.time()
    gen = torch.Generator().manual_seed(cfg.seed)
    data = psm_training_data(model.image_size, cfg.train_images, cfg.seed)
    train, held = data.train, data.heldout
    dev = model.device
    held = held[:64].to(dev)
    before = {s: score(model, None, held, s, 32, torch.Generator().manual_seed(1)) for s in cfg.sigmas}
    step0, stage0 = _resume(psm, ckpt_dir, cache_key(model, cfg))
    if psm.purifier is not None and stage0 == 1:
        _run_stage(model, psm, cfg, train, gen, ckpt_dir, stage=1, first=step0)
        step0 = 0
    if stage0 <= 2:
        _run_stage(model, psm, cfg, train, gen, ckpt_dir, stage=2, first=step0 if stage0 == 2 else 0)
    psm.eval()
    after = {s: score(model, psm, held, s, 32, torch.Generator().manual_seed(1)) for s in cfg.sigmas}
    (ckpt_dir / "ckpt.safetensors").unlink(missing_ok=True)
    return {"s_hat_before": before, "s_hat_after": after, "heldout_images": len(held), "train_s": time.time() - start,
            "training_data": data.record}


def _run_stage(model: Any, psm: PSM, cfg: PSMTrainConfig, train: Tensor, gen: torch.Generator, ckpt_dir: Path,
               *, stage: int, first: int) -> None:
    steps = cfg.purifier_steps if stage == 1 else cfg.mapper_steps
    params = list(psm.purifier.parameters()) if stage == 1 else list(psm.mapper.parameters())
    if stage == 2 and cfg.finetune_purifier and psm.purifier is not None:
        params += list(psm.purifier.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    psm.train()
    for step in range(first, steps):
        gen.manual_seed(cfg.seed * 100_003 + stage * 10_007 + step)  # resume reproduces the data stream
        x = train[torch.randint(0, len(train), (cfg.batch_size,), generator=gen)].to(model.device)
        sigma = cfg.sigmas[int(torch.randint(0, len(cfg.sigmas), (1,), generator=gen))]
        noisy = x + sigma * torch.randn(x.shape, generator=gen).to(x.device)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = _stage_loss(model, psm, cfg, x, noisy, sigma, stage)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            log.info("psm stage %d step %d/%d loss %.4f", stage, step + 1, steps, float(loss.detach()))
            _checkpoint(psm, ckpt_dir, stage if step + 1 < steps else stage + 1, (step + 1) % steps,
                        cache_key(model, cfg))


def _stage_loss(model: Any, psm: PSM, cfg: PSMTrainConfig, x: Tensor, noisy: Tensor, sigma: float,
                stage: int) -> Tensor:
    if stage == 1:
        assert psm.purifier is not None
        return F.mse_loss(psm.purifier(noisy, sigma), x)
    with torch.no_grad():
        raw_clean = model.raw_vision_features(x)
        h_clean = _unit(raw_clean)
    h_noisy = _unit(psm.map(model.raw_vision_features(psm.purify(noisy, sigma)), sigma))
    consistency = (1 - (h_noisy * h_clean).sum(-1)).mean()
    identity = (_unit(psm.map(raw_clean, sigma)) - h_clean).pow(2).sum(-1).mean()
    return consistency + cfg.lambda_u * identity


def _checkpoint(psm: PSM, ckpt_dir: Path, stage: int, step: int, key: str) -> None:
    """Parameters + position (optimizer moments restart on resume; the data stream does not)."""
    from safetensors.torch import save_file

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in psm.state_dict().items()}
    state["__stage_step__"] = torch.tensor([stage, step])
    save_file(state, str(ckpt_dir / "ckpt.tmp"), metadata={"key": key})
    (ckpt_dir / "ckpt.tmp").replace(ckpt_dir / "ckpt.safetensors")


def _resume(psm: PSM, ckpt_dir: Path, key: str) -> tuple[int, int]:
    """(step, stage) to continue from; (0, 1) for a fresh run or a checkpoint of another config."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    f = ckpt_dir / "ckpt.safetensors"
    if not f.exists():
        return 0, 1
    with safe_open(str(f), "pt") as fh:
        if (fh.metadata() or {}).get("key") != key:
            log.warning("ignoring checkpoint %s: it belongs to another PSM config or model revision", f)
            return 0, 1
    state = load_file(str(f))
    stage, step = (int(v) for v in state.pop("__stage_step__"))
    psm.load_state_dict(state)
    log.info("resuming PSM training from %s (stage %d, step %d)", f, stage, step)
    return step, stage
