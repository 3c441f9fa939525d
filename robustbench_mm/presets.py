"""YAML presets -> validated, frozen specs; ``8/255`` parsing; stable config hashes.

A preset file ``attacks/pgd.yaml`` names a registered implementation (``impl``) and the
keyword arguments of its constructor (``params``). Unknown keys, wrong types and bad values
are ``ConfigError``s naming the file and the key.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, Mapping, get_args, get_origin

import yaml

from robustbench_mm.errors import ConfigError
from robustbench_mm.registry import Registry, unknown_name_message

KINDS = ("attack", "defense", "task", "grid")
_TOP_KEYS = {"name", "impl", "version", "params", "base", "description"}
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]*$")


def presets_root() -> Path:
    """Folder holding attacks/, defenses/, tasks/: ``robustbench_mm/_presets`` in an installed
    package (copied there at build time by setup.py), the checkout's root in an editable install."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_presets", here.parent):
        if (candidate / "attacks").is_dir() and (candidate / "tasks").is_dir():
            return candidate
    raise ConfigError(f"preset folders attacks/, tasks/ not found next to {here}; reinstall mmrobust")


def preset_dir(kind: str) -> Path:
    sub = {"attack": "attacks", "defense": "defenses", "task": "tasks", "grid": "tasks/grids"}[kind]
    return presets_root() / sub


def preset_names(kind: str) -> list[str]:
    return sorted(p.stem for p in preset_dir(kind).glob("*.yaml"))


def parse_number(raw: object, where: str) -> float:
    """Accept ints, floats and fractions written as strings (``"8/255"``, ``"0.5"``)."""
    if isinstance(raw, bool):
        raise ConfigError(f"{where}={raw!r} is not a number or fraction like 8/255")
    if isinstance(raw, (int, float)):
        return float(raw)
    if isinstance(raw, str):
        try:
            return float(Fraction(raw.strip().replace(" ", "")))
        except (ValueError, ZeroDivisionError):
            pass
    raise ConfigError(f"{where}={raw!r} is not a number or fraction like 8/255")


def fmt_eps(eps: Any) -> str:
    """The inverse of :func:`parse_number` for readers: ``8/255`` when ``eps`` is a multiple k/255
    with 0 < k < 255, ``0`` for 0, else 4 significant digits; ``None``/NaN give ``""``."""
    try:
        e = float(eps)
    except (TypeError, ValueError):
        return ""
    if math.isnan(e):
        return ""
    if e == 0:
        return "0"
    k = e * 255
    if 0 < round(k) < 255 and abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{e:.4g}"


@dataclass(frozen=True)
class Preset:
    """A resolved preset: implementation name and validated constructor parameters."""

    kind: str
    name: str
    impl: str
    version: int
    params: Mapping[str, Any]
    path: str = ""
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def config(self) -> dict[str, Any]:
        """What identifies the preset's numbers (path and description excluded)."""
        return {"kind": self.kind, "name": self.name, "impl": self.impl, "version": self.version,
                "params": dict(self.params)}


def stable_hash(obj: Any, length: int = 16) -> str:
    """Order-independent hash of a JSON-able config."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} malformed YAML ({getattr(exc, 'problem', exc)}); fix the syntax") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read preset ({exc.strerror})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a preset must be a YAML mapping with name/impl/params")
    return data


def find_preset(kind: str, ref: str) -> Path:
    """A preset name (``pgd``) resolves inside its folder; a path to a .yaml file is taken as given."""
    if ref.endswith((".yaml", ".yml")) or "/" in ref or "\\" in ref:
        path = Path(ref)
        if not path.is_file():
            raise ConfigError(f"{kind} preset file {ref!r} does not exist")
        return path
    if not _NAME_RE.match(ref):
        raise ConfigError(f"{kind} name {ref!r} is not a preset name (lowercase, digits, '-', '.') or a .yaml path")
    path = preset_dir(kind) / f"{ref}.yaml"
    if not path.is_file():
        from robustbench_mm.errors import UnknownNameError

        raise UnknownNameError(unknown_name_message(kind, ref, preset_names(kind)))
    return path


def load_raw(kind: str, ref: str) -> tuple[Path, dict[str, Any]]:
    """Read a preset and merge its ``base:`` (one level) under it."""
    path = find_preset(kind, ref)
    data = _read_yaml(path)
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key {sorted(unknown)[0]!r}; allowed: {', '.join(sorted(_TOP_KEYS))}")
    if "base" in data:
        base_path = find_preset(kind, str(data["base"]))
        base = _read_yaml(base_path)
        if "base" in base:
            raise ConfigError(f"{path}: base {data['base']!r} has a base itself; only one level is allowed")
        params = {**(base.get("params") or {}), **(data.get("params") or {})}
        data = {**base, **data, "params": params}
    return path, data


def load_preset(kind: str, ref: str, registry: Registry[Any], overrides: Mapping[str, Any] | None = None) -> Preset:
    """Load, merge, override and validate a preset against its implementation's constructor."""
    path, data = load_raw(kind, ref)
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path}: missing key 'name'")
    if path.parent == preset_dir(kind) and name != path.stem:
        raise ConfigError(f"{path}: name {name!r} must equal the file stem {path.stem!r}")
    impl = data.get("impl")
    if not isinstance(impl, str):
        raise ConfigError(f"{path}: missing key 'impl' (one of {', '.join(registry.names())})")
    if impl not in registry:
        raise ConfigError(f"{path}: impl: {unknown_name_message(kind + ' implementation', impl, registry.names())}")
    version = data.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ConfigError(f"{path}: version={version!r} must be an integer")
    params = data.get("params") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: params must be a mapping of constructor arguments")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    merged = {**params, **overrides}
    validated = validate_params(registry.get(impl), merged, str(path), set(overrides))
    return Preset(kind, name, impl, version, validated, str(path), dict(overrides))


def build(cls: Any, preset: Preset) -> Any:
    """Construct ``cls(**preset.params)`` named after the preset; a rejected value becomes one
    ConfigError that names the flag or preset file it came from."""
    try:
        obj = cls(**preset.params)
    except TypeError as exc:
        raise ConfigError(f"{preset.path}: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{_blame(preset, str(exc))}: {exc}") from None
    obj.name = preset.name
    return obj


def _blame(preset: Preset, message: str) -> str:
    """The command line when the rejected value came from a flag (``--eps 2``), else the preset file."""
    flagged = [k for k in preset.overrides if k in message]
    if not flagged:
        return preset.path
    flags = ", ".join(f"--{k.replace('_', '-')} {preset.overrides[k]:g}" if isinstance(preset.overrides[k], float)
                      else f"--{k.replace('_', '-')} {preset.overrides[k]}" for k in flagged)
    return f"command line ({flags}, applied to {preset.kind} {preset.name})"


def validate_params(impl: Any, params: Mapping[str, Any], where: str, overridden: set[str]) -> dict[str, Any]:
    """Check names and types against ``impl.__init__``'s annotated keyword parameters."""
    sig = inspect.signature(impl)
    hints = typing.get_type_hints(impl.__init__) if inspect.isclass(impl) else typing.get_type_hints(impl)
    allowed = {n: p for n, p in sig.parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    out: dict[str, Any] = {}
    for key, raw in params.items():
        src = "command line" if key in overridden else where
        if key not in allowed:
            valid = ", ".join(sorted(allowed)) or "none"
            raise ConfigError(f"{src}: params.{key} is not a parameter of {getattr(impl, '__name__', impl)} "
                              f"(valid: {valid})")
        out[key] = coerce(raw, hints.get(key, Any), f"{src}: params.{key}")
    return out


def coerce(raw: Any, hint: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type, or raise ConfigError naming where."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return raw
    if origin in (typing.Union, types.UnionType):
        if raw is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(raw, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}={raw!r} has the wrong type")
    if origin is Literal:
        if raw not in args:
            raise ConfigError(f"{where}={raw!r} must be one of {', '.join(map(str, args))}")
        return raw
    if hint is float:
        return parse_number(raw, where)
    if hint is bool:
        if not isinstance(raw, bool):
            raise ConfigError(f"{where}={raw!r} must be true or false")
        return raw
    if hint is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            if isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
                return int(raw)
            raise ConfigError(f"{where}={raw!r} must be an integer")
        return raw
    if hint is str:
        if not isinstance(raw, str):
            raise ConfigError(f"{where}={raw!r} must be a string")
        return raw
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(raw, (list, tuple)):
            raise ConfigError(f"{where}={raw!r} must be a list")
        inner = args[0] if args else Any
        return tuple(coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(raw))
    return raw


def load_grid(ref: str) -> dict[str, Any]:
    """A grid preset: ``models``, ``attacks``, ``defenses``, ``tasks`` lists and shared overrides."""
    path = find_preset("grid", ref)
    data = _read_yaml(path)
    allowed = {"name", "description", "models", "attacks", "defenses", "tasks", "n", "seed", "eps", "steps",
               "batch_size", "version"}
    unknown = set(data) - allowed
    if unknown:
        raise ConfigError(f"{path}: unknown key {sorted(unknown)[0]!r}; allowed: {', '.join(sorted(allowed))}")
    for key in ("models", "attacks"):
        if not isinstance(data.get(key), list) or not data[key]:
            raise ConfigError(f"{path}: {key} must be a non-empty list")
    return data
