"""The gateway's one config file: YAML -> typed, checked objects, problems with line numbers.

``load_config(path)`` returns a `GatewayConfig` or raises `ConfigError` listing every problem of
the file (``file:line:column: key.path: found ...; expected ...``). No raw dict leaves this
package: devices carry their protocol's config model, bridges their target's route model.
"""

from gateway.config.common import Backoff, Deadband, Problem, Strict
from gateway.config.errors import ConfigError, LocatedProblem, format_path
from gateway.config.model import (
    BridgeConfig,
    DeviceEntry,
    GatewayConfig,
    GatewaySection,
    load_config,
    load_config_text,
)

__all__ = [
    "Backoff",
    "BridgeConfig",
    "ConfigError",
    "Deadband",
    "DeviceEntry",
    "GatewayConfig",
    "GatewaySection",
    "LocatedProblem",
    "Problem",
    "Strict",
    "format_path",
    "load_config",
    "load_config_text",
]
