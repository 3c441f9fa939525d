"""The smoothed *classifier* of a noise defense on zero-shot tasks: its CERTIFY rows (Cohen et al.
2019) and a verdict that judges samples with PREDICT, so that the classifier the tables call broken
and the one they call certified are the same object (docs/certificates.md).

Base classifier ``f(x') = argmax_c <normalize(E(x')), t_c>`` with ``E`` the defense's deterministic
encoder (plain, or ``M(E(P(.)))`` with PSM) and ``t_c`` the unit class embeddings; the noise is in
[0,1] pixel units (the adapters normalise inside ``raw_vision_features``, after the noise).

On multimodal classification (image + a fixed description per sample) the base classifier is the
task's fused logits with the same deterministic encoder; only the image is smoothed and certified,
the description stays the sample's own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from robustbench_mm.attacks.verdict import Verdict, fp32_forward
from robustbench_mm.defenses.rs_certify import LogitFn, RSCertificate, predict
from robustbench_mm.tasks.crmt_task import fused_text_logits
from robustbench_mm.types import Batch

RS_QUANTITIES = ("certified_accuracy", "rs_radius", "p_lower", "rs_abstain")
VERDICT_SEED_OFFSET = 7_777_777  # the verdict's noise stream is disjoint from the certificate's


def zero_shot_logits(encoder: Callable[[Tensor], Tensor], anchors: Tensor) -> LogitFn:
    """Cosine logits of the (noisy) pixels against unit class embeddings ``anchors`` ``[C,D]``."""
    def logits(noisy: Tensor) -> Tensor:
        return F.normalize(encoder(noisy).flatten(1).float(), dim=-1) @ anchors.to(noisy.device).T
    return logits


def described_logits(base_model: Any, texts: Sequence[str], class_prompts: Sequence[str]) -> LogitFn:
    """Fused logits of noisy copies of ``len(texts)`` images: the noise loops hand over ``[B*m]``
    pixels image-major (image ``i``'s ``m`` draws in a row), so row ``j`` carries ``texts[j // m]``.
    ``base_model``'s vision features must be the deterministic base encoder (no smoothing inside)."""
    b = len(texts)

    def logits(noisy: Tensor) -> Tensor:
        if len(noisy) % b:
            raise ValueError(f"{len(noisy)} noisy images for {b} descriptions; expected a multiple")
        m = len(noisy) // b
        return fused_text_logits(base_model, noisy, [t for t in texts for _ in range(m)], class_prompts).float()
    return logits


def curve_radii(sigma: float, points: int = 17) -> tuple[float, ...]:
    """The certified-accuracy curve's l2 radii: 0 to 4 sigma."""
    return tuple(round(4 * sigma * i / (points - 1), 10) for i in range(points))


def rs_rows(cert: RSCertificate, batch: Batch, radii: Sequence[float]) -> pd.DataFrame:
    """Long rows: per radius ``certified_accuracy`` (1 = certified correct with radius > r, 0 =
    certified but wrong, NaN + abstain = abstained); at radius 0 the per-sample ``rs_radius``,
    ``p_lower``, ``rs_prediction`` and ``rs_abstain``. All ``bound_kind="sound"`` except
    ``rs_prediction`` (a label, not a bound)."""
    idx = batch.index.cpu().long().numpy()
    labels = batch.labels.cpu().long()
    meta = {"mc_samples": cert.n, "n0": cert.n0, "alpha": cert.alpha, "sigma": cert.sigma, "bound": "clopper-pearson"}
    frames = []
    for r in radii:
        acc = cert.certified_at(labels, r).double()
        frames.append(pd.DataFrame({"index": idx, "radius": float(r), "quantity": "certified_accuracy",
                                    "value": acc.masked_fill(cert.abstain, float("nan")).numpy(),
                                    "abstain": cert.abstain.numpy(), "bound_kind": "sound", **meta}))
    for name, values, kind in (("rs_radius", cert.radius, "sound"), ("p_lower", cert.p_lower, "sound"),
                               ("rs_prediction", cert.prediction.double(), "estimate"),
                               ("rs_abstain", cert.abstain.double(), "estimate")):
        frames.append(pd.DataFrame({"index": idx, "radius": 0.0, "quantity": name, "value": values.double().numpy(),
                                    "abstain": False, "bound_kind": kind, **meta}))
    return pd.concat(frames, ignore_index=True)


@dataclass(frozen=True)
class SmoothedVerdict(Verdict):
    """Correct = PREDICT of the smoothed classifier returns the label; an abstention counts as wrong
    (not clean-correct on the clean input, broken on the adversarial one). ``draws`` (> 1) marks the
    model as randomized for the attacks; PREDICT itself uses ``n`` draws per sample, seeded by the
    sample's index (the same noise for its clean and adversarial verdicts)."""

    logits_for: Callable[[Any, Batch], LogitFn] | None = None  # (model, batch) -> base classifier
    sigma: float = 0.25
    n: int = 256
    alpha: float = 0.001
    batch_size: int = 1024
    seed: int = 0

    def votes(self, model: Any, batch: Batch) -> tuple[Tensor, list[Any]]:
        assert self.logits_for is not None
        seeds = [self.seed * 1_000_003 + VERDICT_SEED_OFFSET + int(i) for i in batch.index.tolist()]
        with fp32_forward(batch.pixels.device):
            pred = predict(self.logits_for(model, batch), batch.pixels.float(), sigma=self.sigma, n=self.n, alpha=self.alpha,
                           batch_size=self.batch_size, seeds=seeds)
        return self.task.correct(batch, pred).cpu().bool().unsqueeze(0), [pred]
