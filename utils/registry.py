"""Name -> class registries filled by decorators (one per concern: data, models, compressors, trainers).

Names are matched case-insensitively; an unknown name raises :class:`UnknownName` listing the valid
names and the closest match.  A dotted path ``"package.module:ClassName"`` loads a class from outside
the repository without registering it, so users can keep their own criteria in their own packages --
but only from modules the user allowed (:func:`allow_modules`: the ``--allow-module`` flag of the
command line, or the ``PAI_ALLOW_MODULES`` environment variable), so that reading a config received from
someone else (``validate``) never imports, hence never runs, code it names.
"""

from __future__ import annotations

import difflib
import importlib
import os
import pkgutil
from typing import Callable, Generic, Iterable, TypeVar

T = TypeVar("T")

ALLOW_ENV = "PAI_ALLOW_MODULES"  # comma-separated modules (and packages) dotted paths may import from
_ALLOWED: set[str] = set()


def allow_modules(names: Iterable[str]) -> None:
    """Let ``module:Class`` names import from these modules and packages (and everything below them)."""
    _ALLOWED.update(n.strip() for n in names if n and n.strip())


def allowed_modules() -> set[str]:
    """The modules allowed by :func:`allow_modules` and by ``$PAI_ALLOW_MODULES``."""
    return _ALLOWED | {n.strip() for n in os.environ.get(ALLOW_ENV, "").split(",") if n.strip()}


def module_allowed(module: str) -> bool:
    return any(module == a or module.startswith(a + ".") for a in allowed_modules())


class UnknownName(KeyError):
    """Raised for a name that is not registered; the message lists the valid names."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # KeyError quotes its argument; we want plain text
        return self.message


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest candidate, or an empty string."""
    pool = list(candidates)
    lowered = {c.lower(): c for c in pool}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean '{lowered[close[0]]}'?)" if close else ""


class Registry(Generic[T]):
    """A case-insensitive registry of classes (or factories) under one or more names each.

    ``plugins`` names the package whose modules register the entries: every module of it whose name does
    not start with an underscore is imported before a lookup (:meth:`discover`), so dropping a file with
    one decorated class into that folder is all it takes to add an entry."""

    def __init__(self, kind: str, plugins: str | None = None) -> None:
        self.kind = kind
        self.plugins = plugins
        self._entries: dict[str, T] = {}
        self._display: dict[str, str] = {}

    def discover(self) -> list[str]:
        """Import every plugin module (again picking up newly added files); returns their names."""
        if self.plugins is None:
            return []
        package = importlib.import_module(self.plugins)
        return import_submodules(self.plugins, package.__path__)

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("snip")`` registers the class under that name (and aliases)."""

        def decorator(obj: T) -> T:
            for n in (name, *aliases):
                key = n.lower()
                if key in self._entries and self._entries[key] is not obj:
                    raise ValueError(f"{self.kind} name '{n}' is already registered to {self._entries[key]!r}")
                self._entries[key] = obj
                self._display[key] = n
            if hasattr(obj, "__dict__") and "registered_name" not in vars(obj):
                try:
                    obj.registered_name = name  # type: ignore[attr-defined]
                except (AttributeError, TypeError):
                    pass
            return obj

        return decorator

    def names(self) -> list[str]:
        """All registered names (including aliases), sorted, as they were registered."""
        self.discover()
        return sorted(self._display.values(), key=str.lower)

    def get(self, name: str) -> T:
        """Look a name up (case-insensitively) or load ``module.path:Attr``; raise UnknownName otherwise."""
        self.discover()
        if not isinstance(name, str) or not name:
            raise UnknownName(f"{self.kind} name must be a non-empty string, got {name!r}")
        if ":" in name:
            return self._load_dotted(name)
        key = name.lower()
        if key not in self._entries:
            raise UnknownName(
                f"unknown {self.kind} '{name}'{did_you_mean(name, self.names())}; "
                f"valid: {', '.join(self.names())}, or 'package.module:ClassName'"
            )
        return self._entries[key]

    def canonical(self, name: str) -> str:
        """The name an entry was registered under first (used in folder names and reports)."""
        obj = self.get(name)
        return getattr(obj, "registered_name", name) if ":" not in name else name

    def _load_dotted(self, path: str) -> T:
        module_name, _, attr = path.partition(":")
        if not module_allowed(module_name):
            top = module_name.split(".")[0] or module_name
            raise UnknownName(f"{self.kind} '{path}': module '{module_name}' is not imported, as it was not allowed; "
                              f"to load classes from it, pass --allow-module {top} (or set {ALLOW_ENV}={top})")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UnknownName(f"cannot import module '{module_name}' for {self.kind} '{path}': {exc}") from exc
        try:
            return getattr(module, attr)
        except AttributeError:
            raise UnknownName(f"module '{module_name}' has no attribute '{attr}' ({self.kind} '{path}')") from None


def import_submodules(package_name: str, package_path: Iterable[str]) -> list[str]:
    """Import every module of a package so that their decorators register themselves.

    Modules whose name starts with an underscore, and subpackages, are skipped.  Returns the imported
    module names.
    """
    imported = []
    for info in sorted(pkgutil.iter_modules(list(package_path)), key=lambda m: m.name):
        if info.name.startswith("_") or info.ispkg:
            continue
        importlib.import_module(f"{package_name}.{info.name}")
        imported.append(info.name)
    return imported
