"""Registry lookups, preset parsing/validation and eps parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustbench_mm.attacks.base import ATTACKS
from robustbench_mm.errors import ConfigError, UnknownNameError
from robustbench_mm.presets import load_preset, parse_number
from robustbench_mm.registry import Registry
from robustbench_mm.runner.registration import register_all

register_all()


def test_registry_suggests_close_matches() -> None:
    reg: Registry[int] = Registry("attack")
    reg.add("pgd", 1)
    reg.add("apgd-ce", 2)
    with pytest.raises(UnknownNameError) as err:
        reg.get("pgdd")
    msg = str(err.value)
    assert "Did you mean: pgd" in msg and "mmrobust list attacks" in msg and "\n" not in msg


def test_registry_rejects_duplicates() -> None:
    reg: Registry[int] = Registry("model")
    reg.add("a", 1)
    with pytest.raises(ValueError):
        reg.add("a", 2)


@pytest.mark.parametrize("raw,expected", [("8/255", 8 / 255), ("4 / 255", 4 / 255), (0.5, 0.5), (1, 1.0),
                                          ("0.25", 0.25)])
def test_parse_number(raw: object, expected: float) -> None:
    assert parse_number(raw, "eps") == pytest.approx(expected)


@pytest.mark.parametrize("raw", ["8/0", "eight", True, None, [1]])
def test_parse_number_rejects(raw: object) -> None:
    with pytest.raises(ConfigError):
        parse_number(raw, "eps")


def test_pgd_preset_loads_with_fraction() -> None:
    p = load_preset("attack", "pgd", ATTACKS)
    assert p.impl == "pgd" and p.params["eps"] == pytest.approx(8 / 255)


def test_base_inheritance_and_override() -> None:
    p = load_preset("attack", "pgd-l2", ATTACKS, {"eps": "0.25"})
    assert p.params["norm"] == "l2" and p.params["eps"] == 0.25 and p.params["restarts"] == 1


def _write(tmp_path: Path, text: str) -> str:
    f = tmp_path / "x.yaml"
    f.write_text(text)
    return str(f)


@pytest.mark.parametrize("text,needle", [
    ("name: x\nimpl: pgd\nparams:\n  epss: 0.1\n", "params.epss"),
    ("name: x\nimpl: pgd\nparams:\n  steps: ten\n", "params.steps"),
    ("name: x\nimpl: pgd\nparams:\n  norm: l1\n", "params.norm"),
    ("name: x\nimpl: pgd\nfoo: 1\n", "unknown key 'foo'"),
    ("name: x\nimpl: pgdd\n", "Did you mean: pgd"),
    ("name: x\nimpl: pgd\nparams: [1, 2\n", "malformed YAML"),
    ("name: x\nimpl: pgd\nparams:\n  eps: 8/0\n", "params.eps"),
    ("- just\n- a list\n", "mapping"),
])
def test_bad_presets_name_file_and_key(tmp_path: Path, text: str, needle: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_preset("attack", path, ATTACKS)
    assert needle in str(err.value) and path in str(err.value)


def test_unknown_preset_name_suggests() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean: pgd"):
        load_preset("attack", "pgdd", ATTACKS)


def test_preset_name_cannot_escape_folder() -> None:
    with pytest.raises(ConfigError):
        load_preset("attack", "..", ATTACKS)
    with pytest.raises(ConfigError):
        load_preset("attack", "../defenses/none", ATTACKS)  # a path, and it does not exist as given


@pytest.mark.parametrize("overrides", [{"eps": 0}, {"eps": -0.1}, {"eps": 2.0}, {"steps": 0}, {"steps": -3}])
def test_invalid_budgets_rejected(overrides: dict[str, float]) -> None:
    from robustbench_mm.runner.resolve import CellSpec, resolve

    with pytest.raises(ConfigError):
        resolve(CellSpec(model="clip-tiny", attack="pgd", **overrides))  # type: ignore[arg-type]
