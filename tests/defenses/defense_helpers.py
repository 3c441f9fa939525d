"""Helpers shared by the training-defense tests."""

from __future__ import annotations


def shipped(defense_name: str, model_name: str = "clip-tiny"):  # type: ignore[no-untyped-def]
    """The preset's defense and the model with the shipped weights (never trains in tests)."""
    from robustbench_mm.defenses.base import DEFENSES
    from robustbench_mm.defenses.training import SHIPPED_DIR
    from robustbench_mm.models.zoo import load_model
    from robustbench_mm.presets import load_preset
    from robustbench_mm.presets import build
    from robustbench_mm.runner.registration import register_all

    register_all()
    defense = build(DEFENSES.get(load_preset("defense", defense_name, DEFENSES).impl),
                     load_preset("defense", defense_name, DEFENSES))
    model = load_model(model_name)
    path = defense.weights_dir(model)
    assert path.parent == SHIPPED_DIR, f"shipped weights of {defense_name} missing or stale; run scripts/train_defenses.py"
    return defense, defense.apply(model)


def fcsb_soundness(model, defense, pixels, radii, *, steps: int = 12, restarts: int = 2, eot: int = 2,
                   n_check: int = 512):  # type: ignore[no-untyped-def]
    """Methods 2.9 soundness: the strongest attack we have on the certified quantity (EOT embedding
    PGD-l2 on ``cos(u, f_hat(x+delta))``, fresh noise every step, restarts) against a fresh large-MC
    estimate of that cosine. Returns ``(checked, violations)`` where a violation is a sample whose
    measured cosine is below its FCSB by more than 3 MC standard deviations of the estimate.

    ``defense`` is an ``fs`` / ``fs-psm`` instance; its plug-in (if any) is part of the encoder."""
    import torch

    from robustbench_mm.attacks.objectives import FeatureCosineObjective
    from robustbench_mm.attacks.pgd import PGD
    from robustbench_mm.defenses.fs_psm.certify import certify_fs
    from robustbench_mm.defenses.fs_psm.smoothing import composite_encoder, smooth_features
    from robustbench_mm.types import Batch

    sigma = defense.sigma
    defended = defense.apply(model)
    enc = composite_encoder(model.raw_vision_features, sigma, defense.plugin(model))
    batch = Batch(pixels=pixels, labels=torch.zeros(len(pixels), dtype=torch.long),
                  index=torch.arange(len(pixels), device=pixels.device))
    checked, violations = 0, []
    for radius in radii:
        cert = certify_fs(enc, pixels, sigma=sigma, n0=defense.n0, n=defense.n, alpha=defense.alpha,
                          radii=(radius,), bound=defense.bound, generator=torch.Generator().manual_seed(1))
        attack = PGD(norm="l2", eps=radius, steps=steps, restarts=restarts, eot=eot, step_size=radius / 4)
        res = attack.perturb(defended, batch, FeatureCosineObjective(cert.u.float()),
                             generator=torch.Generator().manual_seed(2))
        assert float((res.pixels - pixels).flatten(1).norm(dim=1).max()) <= radius + 1e-5
        with torch.no_grad():
            sm, _ = smooth_features(enc, res.pixels, sigma, n_check, torch.Generator().manual_seed(3), chunk=1024)
        fcs = (sm.direction.double() * cert.u.double().to(sm.direction.device)).sum(-1)
        tol = 3.0 * torch.sqrt((1 - sm.s_hat.double() ** 2).clamp_min(0) / n_check) + 1e-3
        for i in range(len(pixels)):
            bound = float(cert.fcsb[i, 0])
            if bound >= 0:
                checked += 1
                if float(fcs[i]) < bound - float(tol[i]):
                    violations.append((radius, i, float(fcs[i]), bound))
    return checked, violations
