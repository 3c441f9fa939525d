"""Versioned attack protocols (``tasks/protocols/<version>-v<N>.yaml``): which attacks, in which
order, under which standard threat models, make *the* robust accuracy of a model on a task.

A protocol file names, per task family (``classification``: the task's objective has class logits;
``generative``: answers scored by the task's metric), its ``members`` (attack presets, run as an
ensemble: each on the samples still standing, per-sample worst case), the members appended for
defenses that declare ``rescales_logits``, and the family's standard ``threat_models``. The row
records the protocol ``id`` (e.g. ``mm-aa/standard/v1``); the cell id hashes every member's preset,
so editing a member can never be mistaken for the same protocol.

This module reads protocol files as data and builds the cell's ensemble preset; the resolver calls
it, never the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from robustbench_mm.attacks.base import ATTACKS, check_threat
from robustbench_mm.attacks.objectives import has_logits
from robustbench_mm.attacks.verdict import DEFAULT_DRAWS, check_draws
from robustbench_mm.attacks.verdict_rule import LEGACY_RULE, check_rule
from robustbench_mm.defenses.base import DEFENSES
from robustbench_mm.errors import ConfigError, UnknownNameError
from robustbench_mm.presets import Preset, build, load_preset, parse_number, presets_root, validate_params
from robustbench_mm.runner.registration import register_all
from robustbench_mm.tasks.base import TASKS
from robustbench_mm.tasks.retrieval import is_retrieval

VERSIONS = ("auto", "standard", "rand")
FAMILIES = ("classification", "generative", "retrieval")
LATEST = {"standard": "standard-v4", "rand": "rand-v2"}
LATEST_RETRIEVAL = "retrieval-v1"  # what auto and standard mean for a retrieval task
_TOP_KEYS = {"name", "id", "version", "description", "verdict_draws", "verdict_rule", "eot_draws", *FAMILIES}
_FAMILY_KEYS = {"members", "rescales_logits", "threat_models"}


@dataclass(frozen=True)
class ThreatModel:
    norm: str
    eps: float


@dataclass(frozen=True)
class FamilyPlan:
    members: tuple[str, ...]
    rescales_logits: tuple[str, ...]
    threat_models: tuple[ThreatModel, ...]


@dataclass(frozen=True)
class Protocol:
    name: str  # preset name, e.g. standard-v1
    id: str  # recorded in tables, e.g. mm-aa/standard/v1
    version: int
    verdict_draws: int
    families: Mapping[str, FamilyPlan]
    path: str
    eot_draws: int | None = None  # random draws per gradient step for randomized defenses (None: presets' eot)
    verdict_rule: str = LEGACY_RULE  # attacks.verdict_rule: sticky from v2 on; a file without the key is v1's final

    def eot_for(self, defense: Any) -> int | None:
        """Members' EOT evaluations per step against ``defense``: ``ceil(eot_draws / d)`` where one
        forward of the defended model averages ``d`` draws, so each step averages >= eot_draws draws."""
        if self.eot_draws is None or not getattr(defense, "randomized", False):
            return None
        return -(-self.eot_draws // max(1, int(getattr(defense, "draws_per_forward", 1))))

    @property
    def attack_name(self) -> str:
        """The cell's ``attack`` column: ``mm-aa-standard-v1``."""
        return self.id.replace("/", "-")

    def plan(self, family: str, task_name: str) -> FamilyPlan:
        if family not in self.families:
            raise ConfigError(f"protocol {self.name} has no {family} members, so it cannot evaluate task {task_name}")
        return self.families[family]

    def config(self) -> dict[str, Any]:
        """What identifies the protocol's numbers: id, version, and every member preset's contents."""
        register_all()
        members = sorted({m for f in self.families.values() for m in (*f.members, *f.rescales_logits)})
        return {"id": self.id, "version": self.version, "verdict_draws": self.verdict_draws,
                **({"eot_draws": self.eot_draws} if self.eot_draws is not None else {}),
                # v1 files (final rule) keep their hash, so their published cells stay resumable
                **({"verdict_rule": self.verdict_rule} if self.verdict_rule != LEGACY_RULE else {}),
                "members": {m: load_preset("attack", m, ATTACKS).config() for m in members}}


def protocols_dir() -> Path:
    return presets_root() / "tasks" / "protocols"


def protocol_names() -> list[str]:
    return sorted(p.stem for p in protocols_dir().glob("*.yaml"))


def version_name(version: str) -> str:
    """``standard`` / ``rand`` -> the latest protocol preset of that version; a preset name or a
    protocol YAML path as given."""
    if version in LATEST:
        return LATEST[version]
    if version in protocol_names() or (version.endswith((".yaml", ".yml")) and Path(version).is_file()):
        return version
    raise ConfigError(f"--version {version!r} is not a protocol version; choose auto, standard or rand "
                      f"(or a preset: {', '.join(protocol_names())})")


def load_protocol(ref: str) -> Protocol:
    """Load and validate a protocol preset by name (``standard-v1``) or YAML path."""
    path = Path(ref) if ref.endswith((".yaml", ".yml")) else protocols_dir() / f"{ref}.yaml"
    if not path.is_file():
        raise UnknownNameError(f"unknown protocol {ref!r}; choose --version auto, standard or rand, a preset "
                               f"({', '.join(protocol_names())}) or a protocol YAML file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML ({exc}); fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a protocol must be a YAML mapping")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key {sorted(unknown)[0]!r}; allowed: {', '.join(sorted(_TOP_KEYS))}")
    for key in ("name", "id"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ConfigError(f"{path}: missing key {key!r}")
    draws = check_draws(data.get("verdict_draws", DEFAULT_DRAWS))
    families = {f: _family(data[f], f"{path}: {f}") for f in FAMILIES if f in data}
    if not families:
        raise ConfigError(f"{path}: a protocol needs a classification, generative or retrieval section")
    version = data.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ConfigError(f"{path}: version={version!r} must be an integer")
    eot_draws = data.get("eot_draws")
    if eot_draws is not None and (not isinstance(eot_draws, int) or isinstance(eot_draws, bool) or eot_draws <= 0):
        raise ConfigError(f"{path}: eot_draws={eot_draws!r} must be a positive integer (random draws per step)")
    try:
        rule = check_rule(data.get("verdict_rule", LEGACY_RULE))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return Protocol(data["name"], data["id"], version, draws, families, str(path), eot_draws, rule)


def _family(raw: Any, where: str) -> FamilyPlan:
    if not isinstance(raw, dict) or set(raw) - _FAMILY_KEYS:
        raise ConfigError(f"{where}: must be a mapping with keys {', '.join(sorted(_FAMILY_KEYS))}")
    members = raw.get("members")
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise ConfigError(f"{where}.members must be a non-empty list of attack preset names")
    extra = raw.get("rescales_logits") or []
    tms = raw.get("threat_models")
    if not isinstance(tms, list) or not tms:
        raise ConfigError(f"{where}.threat_models must be a non-empty list of {{norm, eps}}")
    threats = []
    for i, t in enumerate(tms):
        if not isinstance(t, dict) or t.get("norm") not in ("linf", "l2") or "eps" not in t:
            raise ConfigError(f"{where}.threat_models[{i}] must be {{norm: linf|l2, eps: <number>}}")
        threats.append(ThreatModel(t["norm"], parse_number(t["eps"], f"{where}.threat_models[{i}].eps")))
    return FamilyPlan(tuple(members), tuple(extra), tuple(threats))


def task_family(task: Any) -> str:
    """``retrieval`` for retrieval tasks, ``classification`` when the task's objective has class
    logits, else ``generative``."""
    if is_retrieval(task):
        return "retrieval"
    return "classification" if has_logits(task.objective()) else "generative"


def threat_models(protocol: Protocol, family: str, task_name: str, norm: str | None,
                  eps: float | None) -> list[ThreatModel]:
    """The standard threat models to run: all of the family's, or the one ``--norm`` names (with
    ``--eps`` replacing its budget). A norm the task has no budget for is bad input."""
    plan = protocol.plan(family, task_name)
    if norm is None and eps is None:
        return list(plan.threat_models)
    norms = sorted({t.norm for t in plan.threat_models})
    if norm is None:
        if len(norms) > 1:
            raise ConfigError(f"--eps {eps:g} needs --norm ({' or '.join(norms)}): task {task_name} has budgets for both")
        norm = norms[0]
    picked = [t for t in plan.threat_models if t.norm == norm]
    if not picked:
        raise ConfigError(f"task {task_name} has no {norm} budget in protocol {protocol.id}; "
                          f"use --norm {' or --norm '.join(norms)}")
    if eps is not None:
        check_threat(norm, eps)
        return [ThreatModel(norm, eps)]
    return picked


def protocol_attack_preset(spec: Any, defense_preset: Preset, task_preset: Preset,
                           overrides: Mapping[str, Any]) -> tuple[Protocol, Preset]:
    """The ensemble attack preset a protocol prescribes for this cell's task, defense and budget."""
    protocol = load_protocol(spec.protocol)
    task = build(TASKS.get(task_preset.impl), task_preset)
    defense = build(DEFENSES.get(defense_preset.impl), defense_preset)
    family = task_family(task)
    plan = protocol.plan(family, task.name)
    if spec.norm is None or spec.eps is None:
        raise ConfigError("a protocol cell needs --norm and --eps (mmrobust benchmark fills them in)")
    threat_models(protocol, family, task.name, spec.norm, spec.eps)  # the task must have a budget in this norm
    members = plan.members + (plan.rescales_logits if defense.rescales_logits else ())
    params: dict[str, Any] = {"attacks": list(members), "norm": spec.norm, "eps": spec.eps}
    if family == "retrieval":  # every member over the whole gallery, the worst case per query
        validated = validate_params(ATTACKS.get("retrieval-worst-case"), params, protocol.path, set())
        return protocol, Preset("attack", protocol.attack_name, "retrieval-worst-case", protocol.version, validated,
                                protocol.path, {"norm": spec.norm, "eps": spec.eps})
    eot = protocol.eot_for(defense)
    if eot is not None:
        params["eot"] = eot
    if overrides.get("search_dtype"):
        params["search_dtype"] = overrides["search_dtype"]
    validated = validate_params(ATTACKS.get("ensemble"), params, protocol.path, set())
    preset = Preset("attack", protocol.attack_name, "ensemble", protocol.version, validated, protocol.path,
                    {"norm": spec.norm, "eps": spec.eps})
    return protocol, preset
