"""Protocol plugins, found through the ``protocol_brain.protocols`` entry-point group.

A plugin's entry point names a `ProtocolSpec`. The spec module must stay light: it may import
pydantic and its own config models, never its protocol library. The adapter classes are named as
``"module:Class"`` strings and imported only when a gateway actually runs one, so that
``gateway plugins`` and ``gateway validate`` work even where a protocol's library is missing, and
that a missing library is reported with the extra that installs it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from gateway.adapter import Adapter

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "protocol_brain.protocols"
API_VERSION = 1


class PluginError(Exception):
    """A plugin cannot be loaded or used; the message says what to do."""


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

    def install_hint(self) -> str:
        if self.extra:
            return f"pip install 'protocol-brain[{self.extra}]'"
        return f"install the package that provides protocol {self.name!r}"

    def missing_requirements(self) -> list[str]:
        """Modules the adapters need that cannot be found, without importing them."""
        import importlib.util

        # Only the top-level package: find_spec("a.b") would import "a".
        return [m for m in self.requires if importlib.util.find_spec(m.split(".")[0]) is None]

    def adapter_class(self, role: str) -> type[Adapter]:
        """Import the adapter for ``role``; a missing library names the extra to install."""
        try:
            target = self.adapters[role]
        except KeyError:
            raise PluginError(
                f"protocol {self.name!r} has no {role!r} role (it has: {', '.join(self.roles)})"
            ) from None
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise PluginError(
                f"protocol {self.name!r} needs {exc.name or 'a missing module'}: "
                f"{self.install_hint()}"
            ) from None
        cls: type[Adapter] = getattr(module, attr)
        return cls


@dataclass
class Registry:
    """The protocols installed here, by name."""

    specs: dict[str, ProtocolSpec]
    errors: dict[str, str]  # plugin name -> why it could not be loaded

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
    """Load every plugin spec. Duplicate names are refused: neither copy is used."""
    if entry_points is None:
        entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    specs: dict[str, ProtocolSpec] = {}
    errors: dict[str, str] = {}
    sources: dict[str, list[str]] = {}
    for ep in entry_points:
        dist = ep.dist.name if ep.dist is not None else None
        sources.setdefault(ep.name, []).append(f"{ep.value} (from {dist or 'unknown package'})")
        try:
            obj: Any = ep.load()
        except ImportError as exc:
            extras = _extras_of(ep)
            package = dist or "the plugin's package"
            hint = f"pip install '{package}[{extras[0]}]'" if extras else f"reinstall {package}"
            errors[ep.name] = (
                f"protocol plugin {ep.name!r} failed to import ({exc}); install it with: {hint}"
            )
            continue
        except Exception as exc:  # a broken plugin must not take the others down
            errors[ep.name] = f"protocol plugin {ep.name!r} failed to load: {exc!r}"
            continue
        if not isinstance(obj, ProtocolSpec):
            errors[ep.name] = (
                f"protocol plugin {ep.name!r} ({ep.value}) is a {type(obj).__name__}, "
                "not a ProtocolSpec"
            )
            continue
        if obj.api_version != API_VERSION:
            errors[ep.name] = (
                f"protocol plugin {ep.name!r} is written for plugin API {obj.api_version}, "
                f"this gateway speaks {API_VERSION}"
            )
            continue
        if obj.name != ep.name:
            errors[ep.name] = (
                f"protocol plugin entry point {ep.name!r} names a spec called {obj.name!r}"
            )
            continue
        specs[ep.name] = ProtocolSpec(**{**obj.__dict__, "dist": dist})
    for name, where in sources.items():
        if len(where) > 1:
            specs.pop(name, None)
            errors[name] = (
                f"two plugins register protocol {name!r}: {'; '.join(where)}. "
                "Uninstall one of them."
            )
    for name, err in errors.items():
        log.debug("plugin %s: %s", name, err)
    return Registry(specs, errors)
