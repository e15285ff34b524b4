"""Protocol plugins, found through the ``protocol_brain.protocols`` entry-point group.

A plugin's entry point names a `ProtocolSpec`. The spec module must stay light: it may import
pydantic and its own config models, never its protocol library. The adapter classes are named as
``"module:Class"`` strings and imported only when a gateway actually runs one, so that
``gateway plugins`` and ``gateway validate`` work even where a protocol's library is missing, and
that a missing library is reported with the extra that installs it.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import inspect
import logging
import re
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from gateway.adapter import Adapter

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "protocol_brain.protocols"
API_VERSION = 1
# The distribution of the gateway itself: its plugins are the built-in protocols.
BUILTIN_DIST = "protocol-brain"


def _canonical(dist: str) -> str:
    # PEP 503: "Protocol_Brain" and "protocol-brain" are one distribution.
    return re.sub(r"[-_.]+", "-", dist).lower()


def _is_builtin(dist: str | None) -> bool:
    """Whether ``dist`` (a distribution name) is the gateway's own, whose protocols are built in."""
    return dist is not None and _canonical(dist) == BUILTIN_DIST


class PluginError(Exception):
    """A plugin cannot be loaded or used; the message says what to do.

    ``missing`` names the library module that is not installed when that is the only cause
    (the plugin itself is fine): ``gateway validate`` says so as a warning, not a problem."""

    def __init__(self, message: str, *, missing: str | None = None) -> None:
        super().__init__(message)
        self.missing = missing


@dataclass(frozen=True)
class ProtocolSpec:
    """Metadata of one protocol plugin."""

    name: str
    description: str
    # Pydantic model of one `devices:` entry of this protocol (without the `protocol` key).
    config_model: type[BaseModel]
    # role ("client", "server") -> "module:Class" of the Adapter implementing it.
    adapters: dict[str, str]
    # Pydantic model of a bridge target's options when this protocol is the sink, if it can be.
    route_model: type[BaseModel] | None = None
    # Per-role overrides, for protocols whose client and server take different settings.
    role_models: dict[str, type[BaseModel]] = field(default_factory=dict)
    route_models: dict[str, type[BaseModel] | None] = field(default_factory=dict)
    capabilities: tuple[str, ...] = ()
    extra: str | None = None  # pip extra that installs the protocol library
    requires: tuple[str, ...] = ()  # importable modules the adapters need
    api_version: int = API_VERSION
    dist: str | None = field(default=None, compare=False)

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(self.adapters)

    def model_for(self, role: str) -> type[BaseModel]:
        """The config model of a `devices:` entry in ``role``."""
        return self.role_models.get(role, self.config_model)

    def route_model_for(self, role: str) -> type[BaseModel] | None:
        """The bridge-target options when an entry in ``role`` is a bridge's ``to``."""
        return self.route_models.get(role, self.route_model)

    @property
    def builtin(self) -> bool:
        """Whether this is one of the gateway's own protocols."""
        return _is_builtin(self.dist)

    @property
    def origin(self) -> str:
        """The plugin in words, for messages: its protocol and the distribution it comes from."""
        return f"protocol {self.name!r}" + (f" (from {self.dist})" if self.dist else "")

    def install_hint(self, module: str | None = None) -> str:
        """The line that installs what the adapters need (``module``: the one found missing).

        With ``extra``: the plugin's own distribution with that extra (``protocol-brain[...]``
        for a built-in). Without: the missing modules, and the plugin that needs them.
        """
        package = self.dist or _distribution_of(self.adapters.values())
        if self.extra:
            if package is None:
                return f"install protocol {self.name!r}'s package with its extra {self.extra!r}"
            return f"pip install '{package}[{self.extra}]'"
        modules = [module] if module else self.missing_requirements() or list(self.requires)
        if not modules:
            return f"install the package that provides protocol {self.name!r}"
        named = ("module " if len(modules) == 1 else "modules ") + ", ".join(map(repr, modules))
        needed_by = f" (needed by {package})" if package and not _is_builtin(package) else ""
        return f"install the package that provides {named}{needed_by}"

    def missing_requirements(self) -> list[str]:
        """Modules the adapters need that cannot be found, without importing them."""
        import importlib.util

        # Only the top-level package: find_spec("a.b") would import "a".
        return [m for m in self.requires if importlib.util.find_spec(m.split(".")[0]) is None]

    def needs(self, module: str) -> PluginError:
        """The error of an adapter that cannot run because ``module`` is not installed."""
        return PluginError(
            f"{self.origin} needs {module}: {self.install_hint(module)}", missing=module
        )

    def check_adapter(self, role: str, *, load: bool = True) -> None:
        """Raise the `PluginError` that `adapter_class` would, as far as can be told here.

        First the ``requires`` modules, found without importing them; then, with ``load``,
        the adapter itself is imported (which imports its library). ``gateway validate``
        checks a plugin this way; it does not load the built-ins' adapters, which ship with
        the gateway and only make it slower to import.
        """
        missing = self.missing_requirements()
        if missing:
            raise self.needs(missing[0])
        if load:
            self.adapter_class(role)

    def adapter_class(self, role: str) -> type[Adapter]:
        """Import the adapter for ``role``.

        Raises `PluginError`, one line naming the plugin and the cause, when it cannot be had: a
        missing library (with the line that installs it), an adapter module that does not exist
        or fails to import (a syntax error, a NameError), a class that is not there, or one
        that is not a concrete `Adapter` subclass.
        """
        from gateway.adapter import Adapter

        try:
            target = self.adapters[role]
        except KeyError:
            raise PluginError(
                f"protocol {self.name!r} has no {role!r} role (it has: {', '.join(self.roles)})"
            ) from None
        module_name, colon, attr = target.partition(":")
        what = f"{self.origin}: adapter {target!r} for role {role!r}"
        if not colon or not module_name or not attr:
            raise PluginError(f"{what} is not a 'module:Class' string")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                raise PluginError(f"{what}: there is no module {module_name!r}") from None
            if exc.name and _top(exc.name) != _top(module_name):  # a library, not plugin code
                raise self.needs(exc.name) from None
            raise PluginError(f"{what}: module failed to import: {describe_error(exc)}") from exc
        except Exception as exc:  # a broken adapter module: say where, in one line
            raise PluginError(f"{what}: module failed to import: {describe_error(exc)}") from exc
        obj: Any = module
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise PluginError(f"{what}: {module_name} has no {attr!r}") from None
        if not (isinstance(obj, type) and issubclass(obj, Adapter)):
            kind = "class" if isinstance(obj, type) else type(obj).__name__
            raise PluginError(
                f"{what}: {attr} is a {kind}, not a subclass of gateway.adapter.Adapter"
            )
        if inspect.isabstract(obj):
            missing = ", ".join(sorted(getattr(obj, "__abstractmethods__", ())))
            raise PluginError(f"{what}: {attr} does not implement {missing}")
        return obj


def _top(module: str) -> str:
    return module.partition(".")[0]


def _distribution_of(targets: Iterable[str]) -> str | None:
    """The installed distribution whose package holds these ``"module:Class"`` adapters."""
    where = importlib.metadata.packages_distributions()
    found = {dist for top in {_top(t) for t in targets} for dist in where.get(top, [])}
    return found.pop() if len(found) == 1 else None


def describe_error(exc: BaseException, *, named: bool = True) -> str:
    """``Type: message (file:line)`` of an exception raised in plugin code (the innermost
    frame: where it was raised); without ``Type: `` when not ``named``."""
    text = f"{type(exc).__name__}: {exc}" if named else str(exc)
    if isinstance(exc, SyntaxError):
        return text  # its message already names the file and line
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        text += f" ({frames[-1].filename}:{frames[-1].lineno})"
    return text


@dataclass
class Registry:
    """The protocols installed here, by name."""

    specs: dict[str, ProtocolSpec]
    # protocol name -> why a plugin of that name is not used; a built-in's name can be in both
    # (the built-in in specs, the refused plugin of another package that registers it here).
    errors: dict[str, str]

    def get(self, name: str) -> ProtocolSpec:
        try:
            return self.specs[name]
        except KeyError:
            if name in self.errors:
                raise PluginError(self.errors[name]) from None
            known = ", ".join(sorted(self.specs)) or "none"
            raise PluginError(f"unknown protocol {name!r} (installed: {known})") from None


def _extras_of(ep: importlib.metadata.EntryPoint) -> list[str]:
    # "module:attr [extra]" - the extra is how the plugin asks to be installed.
    return list(getattr(ep, "extras", []) or [])


def load_registry(entry_points: Iterable[importlib.metadata.EntryPoint] | None = None) -> Registry:
    """Load every plugin spec.

    A protocol name is one plugin. A built-in's name stays the built-in's: another package that
    registers it is refused (and not imported), so no install can switch a built-in off. Two
    plugins of other packages with one name are both refused: neither copy is used.
    """
    if entry_points is None:
        entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    claims: dict[str, list[tuple[importlib.metadata.EntryPoint, str | None]]] = {}
    for ep in entry_points:
        claims.setdefault(ep.name, []).append((ep, ep.dist.name if ep.dist is not None else None))
    specs: dict[str, ProtocolSpec] = {}
    errors: dict[str, str] = {}
    for name, found in claims.items():
        problems: list[str] = []
        builtin = [(ep, dist) for ep, dist in found if _is_builtin(dist)]
        if builtin and len(builtin) < len(found):
            problems += [
                f"protocol plugin {name!r} from {dist or 'an unknown package'} ({ep.value}) is "
                f"refused: {name!r} is a built-in protocol of {BUILTIN_DIST}, which is used. "
                f"Uninstall {dist or 'that package'} or give its protocol another name."
                for ep, dist in found
                if not _is_builtin(dist)
            ]
            found = builtin
        if len(found) > 1:
            where = "; ".join(
                f"{ep.value} (from {dist or 'unknown package'})" for ep, dist in found
            )
            count = "two" if len(found) == 2 else str(len(found))
            problems.insert(
                0, f"{count} plugins register protocol {name!r}: {where}. Uninstall one of them."
            )
        else:
            loaded = _load(*found[0])
            if isinstance(loaded, ProtocolSpec):
                specs[name] = loaded
            else:
                problems.insert(0, loaded)
        if problems:
            errors[name] = " ".join(problems)
    for name, err in errors.items():
        log.debug("plugin %s: %s", name, err)
    return Registry(specs, errors)


def _not_installed(
    exc: ImportError, ep: importlib.metadata.EntryPoint, dist: str | None
) -> str | None:
    """The top-level module ``exc`` says is missing when it is no part of the plugin and is not
    installed at all (not a name missing from a module, not a built-in's own dependency)."""
    import importlib.util

    if not isinstance(exc, ModuleNotFoundError) or not exc.name or _is_builtin(dist):
        return None
    top = exc.name.split(".", 1)[0]
    if top == ep.value.split(":", 1)[0].split(".", 1)[0]:
        return None
    try:
        found = importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        found = False
    return None if found else top


def _load(ep: importlib.metadata.EntryPoint, dist: str | None) -> ProtocolSpec | str:
    """The spec an entry point names, or why it cannot be used (one line naming its package)."""
    plugin = f"protocol plugin {ep.name!r} from {dist or 'an unknown package'}"
    try:
        obj: Any = ep.load()
    except ImportError as exc:
        extras = _extras_of(ep)
        package = dist or "the plugin's package"
        if extras:
            hint = f"install it with: pip install '{package}[{extras[0]}]'"
        elif (library := _not_installed(exc, ep, dist)) is not None:
            # A library the package does not bring: reinstalling it would not help.
            hint = f"{package} does not install {library!r}: install that library (pip)"
        else:
            hint = f"install it with: reinstall {package}"
        return f"{plugin} failed to import ({describe_error(exc, named=False)}); {hint}"
    except Exception as exc:  # a broken plugin must not take the others down
        return f"{plugin} failed to load: {describe_error(exc)}"
    if not isinstance(obj, ProtocolSpec):
        return f"{plugin} ({ep.value}) is a {type(obj).__name__}, not a ProtocolSpec"
    if obj.api_version != API_VERSION:
        return (
            f"{plugin} is written for plugin API {obj.api_version}, "
            f"this gateway speaks {API_VERSION}"
        )
    if obj.name != ep.name:
        return f"{plugin}: its entry point {ep.name!r} names a spec called {obj.name!r}"
    return dataclasses.replace(obj, dist=dist)
