"""One small registry class used for models, attacks, defenses and tasks."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

from robustbench_mm.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> implementation map with helpful lookup errors.

    Args:
        kind: singular noun used in messages and in the ``mmrobust list <kind>s`` hint.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@attacks.register("pgd")``. Registering a name twice is an error."""

        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = obj

    def get(self, name: str) -> T:
        """Return the implementation, or raise ``UnknownNameError`` naming close matches."""
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(unknown_name_message(self.kind, name, self.names())) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def names(self) -> list[str]:
        return sorted(self._items)


def unknown_name_message(kind: str, name: str, available: list[str]) -> str:
    """One line: what was given, close matches, and the command that lists all names."""
    close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return f"Unknown {kind} {name!r}.{hint} See `mmrobust list {kind}s` for all names."
