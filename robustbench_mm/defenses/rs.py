"""Registered defense ``rs``: randomized smoothing (Cohen et al. 2019) of the undefended model.

The smoothed classifier ``g(x) = argmax_c P(f(x + d) = c)``, ``d ~ N(0, sigma^2 I)`` in [0,1] pixel
space (before the model's normalisation), ``f`` the model's zero-shot argmax. Verdicts use PREDICT,
certificates CERTIFY (``defenses/rs_certify.py``); the attacks differentiate the feature-averaged
noisy forward (EOT over ``n_inf`` draws per forward, ``n_eot`` forwards per step)."""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd

from robustbench_mm.defenses.base import DEFENSES
from robustbench_mm.defenses.fs_psm.defense import FeatureSmoothing
from robustbench_mm.errors import CapabilityError, ConfigError
from robustbench_mm.types import Batch


@DEFENSES.register("rs")
class RandomizedSmoothing(FeatureSmoothing):
    """Args: sigma (pixel units), n_inf / n_eot (attack surrogate), rs_n0 / rs_n (CERTIFY draws),
    predict_n (PREDICT draws per verdict), alpha, radii (l2, reported beside the 0..4 sigma curve),
    seed, chunk (noisy images per forward, 0 = 1024)."""

    def __init__(self, *, sigma: float = 0.25, n_inf: int = 16, n_eot: int = 4, rs_n0: int = 100, rs_n: int = 2000,
                 predict_n: int = 256, alpha: float = 0.001, radii: tuple[float, ...] = (0.25, 0.5, 1.0),
                 seed: int = 0, chunk: int = 0) -> None:
        super().__init__(sigma=sigma, n_inf=n_inf, n_eot=n_eot, n0=1, n=1, alpha=alpha, radii=radii, seed=seed,
                         chunk=chunk, rs_n0=rs_n0, rs_n=rs_n, predict_n=predict_n)

    def check_task(self, task: Any) -> None:
        if not hasattr(task, "class_prompts"):
            raise CapabilityError(f"defense {self.name or 'rs'!r} certifies a classifier; task "
                                  f"{getattr(task, 'name', task)!r} has no classes; use --task fmnist-zeroshot "
                                  f"(or --defense fs for a feature-space bound)")

    def describe(self) -> dict[str, Any]:
        return {"defense": self.name, "sigma": self.sigma, "n_inf": self.n_inf, "n_eot": self.n_eot,
                "rs_n0": self.rs_n0, "rs_n": self.rs_n, "predict_n": self.predict_n, "alpha": self.alpha}

    def certify(self, model: Any, batch: Batch, radii: Sequence[float]) -> pd.DataFrame:
        """CERTIFY rows only (``smoothed_class.rs_rows``); no feature-space bound."""
        prompts = batch.extra.get("class_prompts")
        if prompts is None or not hasattr(model, "class_weights"):
            raise ConfigError("rs certifies zero-shot classifiers only; the batch carries no class prompts")
        return self.rs_certify_rows(model, prompts, batch, radii)
