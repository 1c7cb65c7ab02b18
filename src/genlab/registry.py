"""Named, validated registries. Their names are the CLI's and the config's valid choices, and each
registry checks its own names: nothing else keeps a second list of them."""

from __future__ import annotations

import difflib
import importlib
from typing import Callable, Generic, Iterator, TypeVar

from genlab.errors import GenlabError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}  # old or short name -> registered name
        self._lazy: dict[str, str] = {}  # name -> the module that registers it, imported on first use

    def register_lazy(self, name: str, module: str) -> None:
        """``name`` is registered by importing ``module`` (a plugin: a family that lives above the
        layer of this registry, such as the detector in genlab.detect), which happens on its first use."""
        if name in self._entries or name in self._lazy:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._lazy[name] = module

    def _load(self, name: str) -> None:
        module = self._lazy.pop(name, None)
        if module is not None:
            importlib.import_module(module)

    def register(self, name: str, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            for key in (name, *aliases):
                if key in self._entries or key in self._aliases:
                    raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[name] = obj
            self._aliases.update({alias: name for alias in aliases})
            return obj

        return decorator

    def canonical(self, name: str) -> str:
        """The registered name for ``name`` or one of its aliases; a GenlabError naming the choices
        (and the nearest ones) for anything else."""
        self._load(name)
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        near = difflib.get_close_matches(name, list(self._entries) + list(self._aliases), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise GenlabError(f"unknown {self.kind} {name!r}{hint} (choices: {', '.join(self.names())})")

    def get(self, name: str) -> T:
        return self._entries[self.canonical(name)]

    def names(self) -> list[str]:
        return sorted([*self._entries, *self._lazy])

    def items(self) -> Iterator[tuple[str, T]]:
        for name in list(self._lazy):
            self._load(name)
        return iter(sorted(self._entries.items()))

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self._aliases or name in self._lazy
