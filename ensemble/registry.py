"""A small generic registry: name -> object, with did-you-mean errors.

Used for voting methods, extraction steps, engines, data splits and prompt
templates, so every "unknown name" error reads the same:
``Unknown method 'majorty'. Did you mean 'majority'? Available: majority, weighted``.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from ensemble.errors import EnsembleError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@METHODS.register("majority")``."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        self.register(name)(obj)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise EnsembleError(unknown_name(self.kind, name, self._items)) from None

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def unknown_name(kind: str, name: str, available: object) -> str:
    """``Unknown <kind> '<name>'. Did you mean '<x>'? Available: a, b, c``."""
    names = [str(a) for a in available]  # type: ignore[union-attr]
    close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"Unknown {kind} '{name}'.{hint} Available: {', '.join(names)}"
