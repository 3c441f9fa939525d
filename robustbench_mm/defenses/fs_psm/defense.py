"""Registered defenses ``fs`` (feature-space smoothing) and ``fs-psm`` (with Purifier + Smoothness Mapper).

Paper: Xia et al., arXiv 2601.16200 (docs/methods.md). Inference swaps the model's vision
features for their Gaussian-smoothed MC estimate (2.6); ``certify`` runs CERTIFY_FS (2.5) and, for
CLIP zero-shot tasks, the prediction-wise certificate (2.13).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Literal, Sequence

import pandas as pd
import torch

from robustbench_mm.defenses.base import DEFENSES, Defense
from robustbench_mm.defenses.fs_psm.certify import ABSTAIN, certify_fs, certify_prediction
from robustbench_mm.defenses.fs_psm.psm import (
    PSM, PSMTrainConfig, cache_dirs, cache_key, find_weights, load_or_train, load_psm, train_into,
)
from robustbench_mm.defenses.fs_psm.smoothing import Plugin, SmoothingTransform, composite_encoder
from robustbench_mm.defenses.rs_certify import certify as rs_certify
from robustbench_mm.defenses.smoothed_class import (
    SmoothedVerdict, curve_radii, described_logits, rs_rows, zero_shot_logits,
)
from robustbench_mm.errors import ConfigError
from robustbench_mm.types import Batch

log = logging.getLogger(__name__)


@DEFENSES.register("fs")
class FeatureSmoothing(Defense):
    """Feature-space smoothing with FCSB certificates.

    Args:
        sigma: Gaussian noise std in [0,1] pixel units (2.5 grid: 0.25 or 0.5).
        n_inf: noise draws per input at inference, averaged in feature space (2.6 [BENCH] 32).
        n_eot: EOT evaluations per attack step the runner adds (each over ``n_inf`` fresh draws).
        n0, n: selection / estimation samples of CERTIFY_FS (2.5 [BENCH] 32 / 1000).
        alpha: failure probability of each certificate (per input and quantity).
        radii: l2 radii reported in certified.parquet (the attack's l2 eps is added by the runner).
        bound: ``hoeffding`` (2.5 default) or ``bernstein`` (empirical Bernstein) for ``S_lo``.
        seed: seeds the inference noise (per cell) and the certification noise (per sample index).
        chunk: encoder micro-batch for the noisy copies (0 = all at once).
    """

    randomized = True
    certifies = True

    def __init__(self, *, sigma: float = 0.25, n_inf: int = 32, n_eot: int = 8, n0: int = 32, n: int = 1000,
                 alpha: float = 0.001, radii: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0),
                 bound: Literal["hoeffding", "bernstein"] = "hoeffding", seed: int = 0, chunk: int = 0,
                 rs_n0: int = 100, rs_n: int = 2000, predict_n: int = 256) -> None:
        if sigma <= 0:
            raise ConfigError(f"sigma={sigma} must be > 0 (pixel units, e.g. 0.25)")
        if min(n_inf, n_eot, n0, n, rs_n0, rs_n, predict_n) <= 0:
            raise ConfigError(f"n_inf={n_inf}, n_eot={n_eot}, n0={n0}, n={n}, rs_n0={rs_n0}, rs_n={rs_n}, "
                              f"predict_n={predict_n} must be positive integers")
        if not 0 < alpha < 1:
            raise ConfigError(f"alpha={alpha} must be in (0, 1), e.g. 0.001")
        if any(r < 0 for r in radii):
            raise ConfigError(f"radii={radii} must be >= 0 (l2, pixel units)")
        self.sigma, self.n_inf, self.n_eot, self.n0, self.n = sigma, n_inf, n_eot, n0, n
        self.alpha, self.radii, self.bound, self.seed, self.chunk = alpha, tuple(radii), bound, seed, chunk
        self.rs_n0, self.rs_n, self.predict_n = rs_n0, rs_n, predict_n
        self.draws_per_forward = n_inf  # each forward already averages n_inf noise draws

    # ---- inference ----------------------------------------------------------------------------
    def plugin(self, model: Any) -> Plugin | None:
        """The deterministic plug-in around the encoder (none for plain FS)."""
        return None

    def apply(self, model: Any) -> Any:
        """A shallow copy of ``model`` whose ``vision_features`` are smoothed (weights shared, untouched)."""
        defended = copy.copy(model)
        gen = torch.Generator().manual_seed(self.seed)
        defended.feature_transform = SmoothingTransform(self.sigma, self.n_inf, self.plugin(model), gen, self.chunk)
        return defended

    def reseed(self, defended: Any, seed: int) -> None:
        defended.feature_transform.generator.manual_seed(int(seed))

    def certificate_radii(self) -> tuple[float, ...]:
        return self.radii

    def describe(self) -> dict[str, Any]:
        return {"defense": self.name, "sigma": self.sigma, "n_inf": self.n_inf, "n_eot": self.n_eot,
                "n0": self.n0, "n": self.n, "alpha": self.alpha, "bound": self.bound,
                "rs_n0": self.rs_n0, "rs_n": self.rs_n, "predict_n": self.predict_n}

    # ---- the smoothed classifier (zero-shot tasks) --------------------------------------------
    def class_logits(self, model: Any, prompts: Any) -> Any:
        """Base classifier of the smoothed classifier: cosine logits of the defense's encoder."""
        return zero_shot_logits(composite_encoder(model.raw_vision_features, self.sigma, self._plugin_of(model)),
                                model.class_weights(prompts))

    def base_classifier(self, model: Any, prompts: Any, batch: Batch) -> Any:
        """The smoothed classifier's base ``f`` for ``batch``: zero-shot cosine logits, or on
        multimodal tasks (``batch.extra['texts']``) the fused logits with each sample's own text."""
        texts = batch.extra.get("texts")
        if texts is None:
            return self.class_logits(model, prompts)
        plugin, sigma = self._plugin_of(model), self.sigma
        base = copy.copy(model)  # the deterministic encoder in place of the smoothing (weights shared)
        base.feature_transform = lambda raw, px: composite_encoder(raw, sigma, plugin)(px)
        return described_logits(base, list(texts), prompts)  # type: ignore[arg-type]

    def _plugin_of(self, model: Any) -> Plugin | None:
        transform = getattr(model, "feature_transform", None)
        return transform.plugin if isinstance(transform, SmoothingTransform) else self.plugin(model)

    def verdict(self, task: Any, draws: int) -> Any:
        """PREDICT (n = ``predict_n``) of the smoothed classifier that ``certify`` certifies."""
        if not hasattr(task, "class_prompts"):
            return None  # generative tasks: the runner's majority verdict
        prompts = task.class_prompts()
        return SmoothedVerdict(task, max(2, draws), logits_for=lambda m, b: self.base_classifier(m, prompts, b),
                               sigma=self.sigma, n=self.predict_n, alpha=self.alpha,
                               batch_size=self.chunk or 1024, seed=self.seed)

    # ---- certification ------------------------------------------------------------------------
    def certify_seeds(self, batch: Batch) -> list[int]:
        """Per-sample certification seeds (by sample index: a sample's noise does not depend on its batch)."""
        return [self.seed * 1_000_003 + int(i) + 1 for i in batch.index.tolist()]

    def rs_certify_rows(self, model: Any, prompts: Any, batch: Batch, radii: Sequence[float]) -> pd.DataFrame:
        """CERTIFY rows of the smoothed classifier at ``radii`` and along the 0..4 sigma curve."""
        cert = rs_certify(self.base_classifier(model, prompts, batch), batch.pixels.float(), sigma=self.sigma, n0=self.rs_n0,
                          n=self.rs_n, alpha=self.alpha, batch_size=self.chunk or 1024,
                          seeds=[s + 3_333_333 for s in self.certify_seeds(batch)])  # a stream apart from FCSB's
        return rs_rows(cert, batch, sorted({float(r) for r in radii} | set(curve_radii(self.sigma))))

    def certify(self, model: Any, batch: Batch, radii: Sequence[float]) -> pd.DataFrame:
        """Per example and radius: ``fcsb`` (first, the runner's per-sample bound),
        ``certified_accuracy`` (zero-shot CLIP, when ``batch.extra['class_prompts']`` is set), and at
        radius 0 the scores ``s_hat`` / ``s_lo``.

        ``fcsb`` bounds ``cos(u, f_hat(x+delta))`` for all ``||delta||_2 <= radius`` with ``u`` the
        stage-1 direction, each with probability ``>= 1 - alpha``; abstentions are ``value=NaN,
        abstain=True``. Bound rows are ``bound_kind="sound"`` (hold with probability ``>= 1 - alpha``);
        ``s_hat``, a point estimate, is ``estimate``.
        All images are certified in one batched Monte Carlo loop with noise drawn on their device,
        seeded by (``seed``, dataset index), so a sample's certificate does not depend on the batch.
        """
        encoder = composite_encoder(model.raw_vision_features, self.sigma, self._plugin_of(model))
        radii = tuple(float(r) for r in radii)
        seeds = self.certify_seeds(batch)
        cert = certify_fs(encoder, batch.pixels, sigma=self.sigma, n0=self.n0, n=self.n, alpha=self.alpha,
                          radii=radii, bound=self.bound, seeds=seeds, chunk=self.chunk)
        fcsb = cert.fcsb
        frames = [self._rows(batch, radii, "fcsb", fcsb)]
        prompts = batch.extra.get("class_prompts")
        if prompts is not None and hasattr(model, "class_weights") and "texts" not in batch.extra:
            anchors = model.class_weights(prompts).to(fcsb.device)
            pc = certify_prediction(cert.u.cpu(), anchors.cpu(), fcsb)
            correct = (pc.pred == batch.labels.cpu()).unsqueeze(1).expand_as(pc.certified)
            acc = torch.where(pc.certified, correct.double(), torch.full_like(fcsb, ABSTAIN))
            frames.append(self._rows(batch, radii, "angle_certified_accuracy", acc))  # FCSB angle test (2.13)
        if prompts is not None and hasattr(model, "class_weights"):  # the angle test is image-only; rs covers fusion
            frames.append(self.rs_certify_rows(model, prompts, batch, radii))
        s_hat, s_lo = cert.s_hat.unsqueeze(1), cert.s_lo.unsqueeze(1)
        frames += [self._rows(batch, (0.0,), "s_hat", s_hat), self._rows(batch, (0.0,), "s_lo", s_lo)]
        return pd.concat(frames, ignore_index=True)

    def _rows(self, batch: Batch, radii: Sequence[float], quantity: str, values: torch.Tensor) -> pd.DataFrame:
        """Long format; ``ABSTAIN`` (-1) becomes ``NaN`` + ``abstain=True``."""
        idx = batch.index.cpu().long()
        b, r = values.shape
        vals = values.double().cpu()
        abstain = vals == ABSTAIN if quantity not in ("s_hat", "s_lo") else torch.zeros_like(vals, dtype=torch.bool)
        return pd.DataFrame({
            "index": idx.repeat_interleave(r).numpy(),
            "radius": torch.tensor(radii, dtype=torch.float64).repeat(b).numpy(),  # float64: runner matches eps
            "quantity": quantity, "value": vals.masked_fill(abstain, float("nan")).flatten().numpy(),
            "abstain": abstain.flatten().numpy(), "mc_samples": self.n, "n0": self.n0, "alpha": self.alpha,
            "sigma": self.sigma, "bound": self.bound,
            "bound_kind": "estimate" if quantity == "s_hat" else "sound",  # s_hat is a point estimate
        })


@DEFENSES.register("fs-psm")
class FeatureSmoothingPSM(FeatureSmoothing):
    """FS with the PSM plug-in (2.7, 2.12): purifier before and smoothness mapper after the frozen encoder.

    Extra args (the PSM training config, hashed with the model revision into the weights' cache key):
        train_sigmas, purifier_steps, mapper_steps, train_batch, lr, lambda_u, hidden, purifier_width,
        use_purifier, finetune_purifier, train_seed, train_images: see ``PSMTrainConfig``.
        train_if_missing: train on demand when no shipped / cached weights match (else an error).
    """

    def __init__(self, *, sigma: float = 0.25, n_inf: int = 32, n_eot: int = 8, n0: int = 32, n: int = 1000,
                 alpha: float = 0.001, radii: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0),
                 bound: Literal["hoeffding", "bernstein"] = "hoeffding", seed: int = 0, chunk: int = 0,
                 train_sigmas: tuple[float, ...] = (0.25, 0.5), purifier_steps: int = 150, mapper_steps: int = 200,
                 train_batch: int = 32, lr: float = 1e-3, lambda_u: float = 1.0, hidden: int = 256,
                 purifier_width: int = 32, use_purifier: bool = True, finetune_purifier: bool = True,
                 train_seed: int = 0, train_images: int = 20000, train_if_missing: bool = True,
                 rs_n0: int = 100, rs_n: int = 2000, predict_n: int = 256) -> None:
        super().__init__(sigma=sigma, n_inf=n_inf, n_eot=n_eot, n0=n0, n=n, alpha=alpha, radii=radii, bound=bound,
                         seed=seed, chunk=chunk, rs_n0=rs_n0, rs_n=rs_n, predict_n=predict_n)
        self.train_config = PSMTrainConfig(tuple(train_sigmas), purifier_steps, mapper_steps, train_batch, lr,
                                           lambda_u, hidden, purifier_width, use_purifier, finetune_purifier,
                                           train_seed, train_images)
        self.train_if_missing = train_if_missing
        self._cache: dict[tuple[str, str], PSM] = {}

    def plugin(self, model: Any) -> PSM:
        key = (getattr(model, "name", ""), getattr(model, "revision", ""))
        if key not in self._cache:
            psm, state = load_or_train(model, self.train_config, train_if_missing=self.train_if_missing)
            log.info("PSM for %s from %s (%s)", model.name, state.path, state.metrics)
            self._cache[key] = psm
        return self._cache[key]

    def train(self, model: Any, *, out: Path | None = None, resume: bool = True, force: bool = False
              ) -> dict[str, Any]:
        """``mmrobust train --defense fs-psm --model M``: train the PSM (2.12) into ``out`` (default: the
        cache; copy to ``fs_psm/weights/<model>/`` to ship). Matching finished weights are reused unless
        ``force``. Returns ``{path, reused, key, metrics}`` (metrics: held-out S_hat before/after)."""
        self.check_training_data()
        key = cache_key(model, self.train_config)
        found = None if force else find_weights(model, key, Path(out) if out else None)
        if found is not None:
            psm_path, reused = found, True
            psm, state = load_psm(model, self.train_config, found)
        else:
            target = Path(out) if out else cache_dirs(model.name, key)[1]
            psm, state = train_into(model, self.train_config, target, resume=resume and not force)
            psm_path, reused = target, False
        self._cache[(getattr(model, "name", ""), getattr(model, "revision", ""))] = psm
        return {"path": str(psm_path), "reused": reused, "key": key, "metrics": state.metrics}

    def check_training_data(self) -> None:
        """``mmrobust train`` calls this before loading the model: the train split must be present."""
        from robustbench_mm.defenses.fs_psm.data import require_train_split

        require_train_split()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "psm": "purifier+mapper" if self.train_config.use_purifier else "mapper"}
