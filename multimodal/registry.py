"""A small generic registry: every pluggable family (backbone presets, schedules, samplers, tasks,
encoders, projectors) is one `Registry`. Names are resolved once, in the factory; an unknown name
is an error that suggests the closest registered one (timm's `create_model` is the model here).
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def suggest(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """Return ' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Registry(Generic[T]):
    """Maps names to entries (classes, builder functions or config instances).

    Args:
        kind: what the entries are, used in error messages ("backbone preset", "sampler", ...).
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T | None = None) -> Any:
        """Register `entry` under `name`; without `entry`, return a decorator."""
        if entry is None:

            def decorator(obj: T) -> T:
                self.register(name, obj)
                return obj

            return decorator
        if name in self._entries:
            raise KeyError(f"{self.kind} '{name}' is already registered")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise KeyError(
                f"unknown {self.kind} '{name}'{suggest(name, tuple(self._entries))}; known: {known}"
            ) from None

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the entry registered under `name` with the given arguments."""
        factory = self.get(name)
        if not isinstance(factory, Callable):  # type: ignore[arg-type]
            raise TypeError(f"{self.kind} '{name}' is not callable")
        return factory(*args, **kwargs)  # type: ignore[operator]

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching a shell-style glob."""
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


# Every registry in the project, by family name, so `mmdiff list` can show them all.
ALL_REGISTRIES: dict[str, Registry[Any]] = {}


def new_registry(family: str, kind: str) -> Registry[Any]:
    """Create and record a registry for `mmdiff list`."""
    registry: Registry[Any] = Registry(kind)
    ALL_REGISTRIES[family] = registry
    return registry
