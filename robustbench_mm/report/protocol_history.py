"""What changed between two protocol ids (``mm-aa/standard/v1`` -> ``mm-aa/standard/v3``), read
from the protocol files in ``tasks/protocols/``.

Each file's ``description`` ends with what changed from the previous version ("Change from v2:
..."); that sentence is the one-line reason a release comparison prints for an entry whose protocol
id moved. Files are read as plain YAML (only ``name``, ``id``, ``version``, ``description``), so an
older release's protocol can be named without building its attack ensemble.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from robustbench_mm.errors import ConfigError
from robustbench_mm.runner.protocol import protocols_dir

_CHANGE = re.compile(r"Changes? from v\d+:\s*(.+)", re.DOTALL)
_ASIDE = re.compile(r"\s*\([^()]*\)")  # parentheticals: details a one-line reason can drop


@dataclass(frozen=True)
class ProtocolVersion:
    name: str  # preset name, e.g. standard-v3
    id: str  # recorded in entries, e.g. mm-aa/standard/v3
    version: int
    change: str  # one line: what changed from the previous version (its first sentence for a v1)

    @property
    def line(self) -> str:
        """``standard-v3: our Square ...``: one step of an explanation."""
        return f"{self.name}: {self.change}"

    @property
    def lineage(self) -> str:
        """``mm-aa/standard``: ids that share it are versions of one protocol."""
        return self.id.rsplit("/", 1)[0]


def one_line_change(description: str) -> str:
    """The first sentence after "Change(s) from vN:", parentheticals dropped; for a file without
    such a sentence (a first version) the description's first sentence."""
    text = " ".join(str(description).split())
    found = _CHANGE.search(text)
    body = found.group(1) if found else text
    sentence = re.split(r"(?<=[.;])\s", body, maxsplit=1)[0].rstrip(".;")
    return _ASIDE.sub("", sentence).strip()


def load_versions(directory: Path | None = None) -> dict[str, ProtocolVersion]:
    """``{protocol id: ProtocolVersion}`` over every protocol file in ``directory``."""
    folder = directory if directory is not None else protocols_dir()
    out: dict[str, ProtocolVersion] = {}
    for path in sorted(folder.glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text()) or {}
            out[str(data["id"])] = ProtocolVersion(name=str(data.get("name", path.stem)), id=str(data["id"]),
                                                   version=int(data["version"]),
                                                   change=one_line_change(data.get("description", "")))
        except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
            raise ConfigError(f"protocol file {path} is unreadable or lacks id/version; fix it or remove it "
                              f"(mmrobust validate checks every preset)") from None
    return out


def require(ids: set[str], versions: dict[str, ProtocolVersion], where: str) -> None:
    """Every protocol id an entry records must have its file, else no move can be explained."""
    missing = sorted(i for i in ids if i not in versions)
    if missing:
        raise ConfigError(f"protocol id {missing[0]!r} in {where} has no file in tasks/protocols/ "
                          f"(known: {', '.join(sorted(versions))}); add the protocol's YAML file "
                          f"(e.g. tasks/protocols/{preset_guess(missing[0])}.yaml)")


def preset_guess(protocol_id: str) -> str:
    """``mm-aa/standard/v3`` -> ``standard-v3``: the naming rule of the protocol files."""
    parts = protocol_id.split("/")
    return f"{parts[-2]}-{parts[-1]}" if len(parts) >= 2 else protocol_id


def between(before: str, after: str, versions: dict[str, ProtocolVersion]) -> list[str]:
    """The change lines that lead from protocol ``before`` to ``after`` (empty when equal).

    Same lineage: every version after the older one up to the newer one, in order (a move back to
    an older version lists the changes it undoes, marked so). Different lineages: no chain exists;
    the line names both and what the new protocol is.
    """
    if before == after:
        return []
    old, new = versions[before], versions[after]
    if old.lineage != new.lineage:
        return [f"{old.name} -> {new.name}: another protocol ({new.change})"]
    low, high = sorted((old.version, new.version))
    steps = sorted((v for v in versions.values() if v.lineage == old.lineage and low < v.version <= high),
                   key=lambda v: v.version)
    if new.version < old.version:
        return [f"undone {v.line}" for v in reversed(steps)]
    return [v.line for v in steps]
