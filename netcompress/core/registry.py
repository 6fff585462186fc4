"""One small generic registry: register, get, list; errors list the valid names."""
from __future__ import annotations

import fnmatch
from typing import Callable, Generic, Iterator, TypeVar

from netcompress.core.errors import NetcompressError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of objects (factories, stage classes, score functions).

    Example:
        >>> models = Registry("model")
        >>> @models.register("tiny")
        ... def tiny(): return 1
        >>> models.get("tiny")()
        1
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, obj: T | None = None, *, help: str = "") -> Callable[[T], T] | T:
        """Register `obj` under `name`; used bare or as a decorator. Names are unique."""

        def add(o: T) -> T:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is already registered")
            self._items[name] = o
            doc = help or (getattr(o, "__doc__", None) or "").strip().splitlines()[:1]
            self._help[name] = doc if isinstance(doc, str) else (doc[0] if doc else "")
            return o

        return add(obj) if obj is not None else add

    def unregister(self, name: str) -> T:
        """Remove and return `name` (tests that register a temporary entry)."""
        self._help.pop(name, None)
        return self._items.pop(name)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise NetcompressError(
                f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self._items))}"
            ) from None

    def list(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def describe(self, name: str) -> str:
        return self._help.get(name, "")

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self._items)
