"""Turn a CellSpec (names + overrides) into built objects and a stable cell id, before any
weights load, so bad input fails fast with one clear line."""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, replace
from typing import Any

from robustbench_mm.attacks.adaptive import WithMarginLoss, needs_margin
from robustbench_mm.attacks.base import ATTACKS, Attack
from robustbench_mm.attacks.objectives import has_logits
from robustbench_mm.attacks.verdict import DEFAULT_DRAWS, check_draws
from robustbench_mm.attacks.verdict_rule import DEFAULT_RULE
from robustbench_mm.defenses.base import DEFENSES, Defense
from robustbench_mm.errors import CapabilityError, ConfigError
from robustbench_mm.models.device import pick_device
from robustbench_mm.models.zoo import ModelEntry, check_available, entry_for, resolve_model_name
from robustbench_mm.presets import Preset, build, load_preset, load_raw, stable_hash
from robustbench_mm.runner.protocol import protocol_attack_preset
from robustbench_mm.runner.registration import register_all
from robustbench_mm.runner.shards import parse_shard
from robustbench_mm.runner.store import SCHEMA_VERSION
from robustbench_mm.runner.vision_encoder import encoder_config, encoder_entry
from robustbench_mm.tasks.base import TASKS, Task

FAMILY_CAPABILITIES = {
    "clip": frozenset({"features", "classify", "text_tower"}),  # text_tower: retrieval ranks captions
    "llava": frozenset({"features", "logprob", "generate"}),
    "blip2": frozenset({"features", "logprob", "generate"}),
}
DEFAULT_TASKS = {"clip": "fmnist-zeroshot", "llava": "fmnist-vqa", "blip2": "fmnist-vqa"}
DTYPES = ("fp32", "bf16")
LOAD_DTYPES = ("fp32", "fp16", "bf16")
DEVICE_MAPS = ("auto",)


class TaskMismatch(CapabilityError):
    """The task needs a capability the model's family lacks (a grid may skip such a pair)."""


@dataclass(frozen=True)
class CellSpec:
    """One cell as the user named it. ``None`` overrides keep the preset's value."""

    model: str
    attack: str = "pgd"
    defense: str = "none"
    task: str | None = None
    seed: int = 0
    n: int | None = 64
    batch_size: int = 64
    device: str | None = None
    dtype: str = "fp32"
    eps: float | None = None
    steps: int | None = None
    norm: str | None = None
    certify: bool | None = None
    allow_pickle: bool = False  # load-time permissions: not part of the cell's identity
    trust_remote_code: bool = False
    compile: bool = False  # torch.compile for speed: an execution option like device, not identity
    load_dtype: str = "fp32"  # precision the weights load in (--load-dtype); part of identity when not fp32
    revision: str | None = None  # hub branch/tag/commit to load (--revision); the resolved commit is identity
    device_map: str | None = None  # "auto": accelerate places a large model; execution option
    protocol: str = ""  # a protocol preset (tasks/protocols/) naming the attack; "" = the attack preset above
    verdict_draws: int | None = None  # fresh draws per verdict for randomized defenses; None = default 16
    shard: str | None = None  # "i/k": run only that slice of the cell's batches (runner.shards); not identity
    vision_encoder: str | None = None  # a CLIP encoder in place of a LLaVA / BLIP-2 tower (runner.vision_encoder)


@dataclass
class ResolvedCell:
    spec: CellSpec
    model_name: str
    entry: ModelEntry
    attack_preset: Preset
    defense_preset: Preset
    task_preset: Preset
    attack: Attack
    defense: Defense
    task: Task
    cell_id: str
    certify: bool
    verdict_draws: int = 1  # draws of the verdict procedure (1 = one fp32 forward; k for randomized defenses)
    protocol: str = ""  # protocol id recorded in the tables, e.g. mm-aa/standard/v1
    verdict_rule: str = DEFAULT_RULE  # how member verdicts and the final one combine (attacks.verdict_rule)
    encoder: ModelEntry | None = None  # the --vision-encoder CLIP model, if any

    def config(self) -> dict[str, Any]:
        """Everything that determines the cell's numbers (hashed into ``cell_id``)."""
        return cell_config(self.entry, self.attack_preset, self.defense_preset, self.task_preset, self.spec)


def cell_config(entry: ModelEntry, attack: Preset, defense: Preset, task: Preset, spec: CellSpec) -> dict[str, Any]:
    extra = {"load_dtype": spec.load_dtype} if spec.load_dtype != "fp32" else {}  # fp32 cells keep their old ids
    if spec.vision_encoder:  # only then: cells without a swapped tower keep their ids
        extra["vision_encoder"] = encoder_config(entry_for_encoder(spec, entry), spec.vision_encoder)
    return {**extra,
        "schema_version": SCHEMA_VERSION,
        "model": {"name": entry.name, "source": entry.source, "weights": entry.fingerprint()},
        "attack": attack.config(),
        "defense": defense.config(),
        "task": task.config(),
        "seed": spec.seed,
        "n": spec.n,
        "dtype": spec.dtype,
    }


def resolve(spec: CellSpec) -> ResolvedCell:
    """Validate names, overrides and compatibility; build attack, defense and task objects."""
    register_all()
    check_scalars(spec)
    model_name = resolve_model_name(spec.model)
    entry = entry_for(model_name, spec.revision)
    if spec.revision and not entry.is_hub():
        raise ConfigError(f"--revision applies to Hugging Face ids; {entry.name!r} is bundled or a local directory")
    check_available(entry)
    encoder = entry_for_encoder(spec, entry) if spec.vision_encoder else None
    overrides = {"eps": spec.eps, "steps": spec.steps, "norm": spec.norm}
    if spec.dtype == "bf16":  # --dtype bf16: the search runs under bf16 autocast; verdicts stay fp32
        overrides["search_dtype"] = "bf16"
    defense_preset = load_preset("defense", spec.defense, DEFENSES)
    task_preset = load_preset("task", spec.task or DEFAULT_TASKS[entry.family], TASKS)
    protocol = None
    if spec.protocol:  # the protocol names the attack (an ensemble of its members) for this threat model
        protocol, attack_preset = protocol_attack_preset(spec, defense_preset, task_preset, overrides)
    else:
        attack_preset = load_preset("attack", spec.attack, ATTACKS, _attack_overrides(spec.attack, overrides))
    attack = build(ATTACKS.get(attack_preset.impl), attack_preset)
    defense = build(DEFENSES.get(defense_preset.impl), defense_preset)
    attack_preset, attack = adaptive_eot(attack_preset, attack, defense)
    task = build(TASKS.get(task_preset.impl), task_preset)
    _check_compatible(entry, defense, task)
    if hasattr(task, "bind_family"):  # per-family prompts (LLaVA and BLIP-2 were evaluated differently)
        task.bind_family(entry.family)
    check_n(spec, task)
    check_targeted(attack, task)
    if spec.shard and getattr(task, "ranks_whole_gallery", False):
        raise ConfigError(f"--shard: task {task.name!r} ranks every query against the whole gallery, so its cell "
                          f"cannot be split; run it without --shard")
    attack.check_task(task.objective(getattr(attack, "loss", None)), FAMILY_CAPABILITIES[entry.family])
    attack_preset, attack = adaptive_margin(attack_preset, attack, defense, task)
    certify = defense.certifies if spec.certify is None else spec.certify
    if certify and not defense.certifies:
        raise ConfigError(f"--certify: defense {defense.name!r} has no certificate (use fs or fs-psm)")
    config = cell_config(entry, attack_preset, defense_preset, task_preset, spec)
    config["certify"] = certify
    draws = verdict_draws(spec, defense, protocol)
    rule = protocol.verdict_rule if protocol is not None else DEFAULT_RULE
    if draws > 1:  # randomized defenses: the verdict's draws (and, outside a protocol, its rule) set the numbers
        config["verdict_draws"] = draws
        if protocol is None:
            config["verdict_rule"] = rule
    if protocol is not None:
        config["protocol"] = protocol.config()
    return ResolvedCell(spec, model_name, entry, attack_preset, defense_preset, task_preset, attack, defense, task,
                        stable_hash(config), certify, draws, protocol.id if protocol is not None else "", rule, encoder)


def entry_for_encoder(spec: CellSpec, entry: ModelEntry) -> ModelEntry:
    return encoder_entry(str(spec.vision_encoder), entry)


def verdict_draws(spec: CellSpec, defense: Defense, protocol: Any = None) -> int:
    """Draws of the verdict procedure: 1 (one fp32 forward) for deterministic defenses; for randomized
    ones ``--verdict-draws``, else the protocol's, else the default (16), validated >= 8."""
    if not defense.randomized:
        return 1
    chosen = spec.verdict_draws or (protocol.verdict_draws if protocol is not None else None) or DEFAULT_DRAWS
    return check_draws(chosen)


def check_scalars(spec: CellSpec) -> None:
    """Options that need no preset: rejected before names are even looked up."""
    if spec.dtype not in DTYPES:
        raise ConfigError(f"--dtype {spec.dtype!r} must be one of {', '.join(DTYPES)}")
    if spec.load_dtype not in LOAD_DTYPES:
        raise ConfigError(f"--load-dtype {spec.load_dtype!r} must be one of {', '.join(LOAD_DTYPES)}")
    if spec.batch_size <= 0:
        raise ConfigError(f"--batch-size {spec.batch_size} must be a positive integer")
    if spec.n is not None and spec.n <= 0:
        raise ConfigError(f"--n {spec.n} must be a positive number of samples")
    if spec.eps is not None and not 0 <= spec.eps < float("inf"):
        raise ConfigError(f"--eps {spec.eps:g} must be a non-negative budget in pixel units (e.g. 8/255)")
    if spec.steps is not None and spec.steps < 0:
        raise ConfigError(f"--steps {spec.steps} must be a non-negative integer")
    if spec.norm is not None and spec.norm not in ("linf", "l2"):
        raise ConfigError(f"--norm {spec.norm!r} must be linf or l2")
    parse_shard(spec.shard)
    if spec.device_map is not None:
        if spec.device_map not in DEVICE_MAPS:
            raise ConfigError(f"--device-map {spec.device_map!r}: only 'auto' is supported")
        import importlib.util

        if importlib.util.find_spec("accelerate") is None:
            raise ConfigError("--device-map auto needs the accelerate package: pip install accelerate")
    pick_device(spec.device)


def check_n(spec: CellSpec, task: Task) -> None:
    """``--n`` within the task's evaluation split (reads the split's size, never a model)."""
    if spec.n is not None:
        task.sample_indices(n=spec.n, seed=spec.seed)


def check_targeted(attack: Attack, task: Task) -> None:
    if getattr(attack, "targeted", False) and type(task).targeted_objective is Task.targeted_objective:
        raise CapabilityError(f"attack {attack.name!r} is targeted but task {task.name!r} has no targets; "
                              f"use an untargeted attack such as pgd")


def _attack_overrides(attack: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """CLI budget flags apply to attacks that have a budget; the clean 'none' ignores them.
    ``search_dtype`` applies where the attack implements it (others record ``search=fp32``)."""
    if attack == "none":
        return {}
    if "search_dtype" in overrides:
        _, data = load_raw("attack", attack)
        impl = data.get("impl")
        if not (isinstance(impl, str) and impl in ATTACKS
                and "search_dtype" in inspect.signature(ATTACKS.get(impl)).parameters):
            overrides = {k: v for k, v in overrides.items() if k != "search_dtype"}
    return overrides


def adaptive_eot(preset: Preset, attack: Attack, defense: Defense) -> tuple[Preset, Attack]:
    """Design 'Trust': a randomized defense is attacked through its noise. When the defense is
    ``randomized`` with ``n_eot`` > 1 and the attack takes an ``eot`` parameter left at 1, rebuild it
    with ``eot = defense.n_eot`` and name it ``<attack>+eot<n>`` in the tables (and the cell id)."""
    n_eot = int(getattr(defense, "n_eot", 0) or 0)
    cls = ATTACKS.get(preset.impl)
    if (not defense.randomized or n_eot <= 1 or getattr(attack, "eot", None) != 1
            or "eot" not in inspect.signature(cls).parameters):
        return preset, attack
    preset = replace(preset, name=f"{preset.name}+eot{n_eot}", params={**preset.params, "eot": n_eot})
    return preset, build(cls, preset)


def adaptive_margin(preset: Preset, attack: Attack, defense: Defense, task: Task) -> tuple[Preset, Attack]:
    """Design 'Trust': against a defense that changes the logits' scale (``rescales_logits``), an
    untargeted classification attack without a margin-type loss also runs with the margin loss on
    the samples it left standing (``attacks.adaptive.WithMarginLoss``), named ``<attack>+margin``."""
    if not defense.rescales_logits or attack.norm is None:
        return preset, attack
    objective = task.objective(getattr(attack, "loss", None))
    if not needs_margin(attack, has_logits(objective)):
        return preset, attack
    preset = replace(preset, name=f"{preset.name}+margin")
    wrapped = WithMarginLoss(attack)
    wrapped.name = preset.name
    return preset, wrapped


def _check_compatible(entry: ModelEntry, defense: Defense, task: Task) -> None:
    caps = FAMILY_CAPABILITIES[entry.family]
    missing = task.requires - caps
    if missing:
        raise TaskMismatch(
            f"task {task.name!r} needs {', '.join(sorted(missing))}, which {entry.family} model {entry.name!r} "
            f"lacks; use --task {DEFAULT_TASKS[entry.family]} or a {'/'.join(sorted(task.families))} model"
        )
    if entry.family not in defense.families:
        raise CapabilityError(
            f"defense {defense.name!r} does not apply to {entry.family} models such as {entry.name!r}; "
            f"it supports {', '.join(sorted(defense.families))}"
        )
    if hasattr(defense, "check_task"):
        defense.check_task(task)


def spec_dict(spec: CellSpec) -> dict[str, Any]:
    return asdict(spec)
