"""JSON Schema (draft 2020-12) of the config file, for editors (``gateway schema``).

The schema is assembled from the installed plugins: a ``devices``/``endpoints`` entry is a
``oneOf`` over every protocol's config model, told apart by its ``protocol`` const; a bridge
accepts its own keys plus the options of every protocol that can be a bridge target (which
target a bridge names is only known from the file, so the schema cannot pick one).

Each plugin's ``$defs`` are moved into the root ``$defs`` under ``<protocol>.<Model>``, so that
two plugins may both have a model called ``Backoff`` without clashing. Cross-references (a
bridge naming a device, point globs, units) are left to ``gateway validate``.

A number, a bool or a string with a pattern may also be written as a ``${...}`` reference
(`gateway.config.references`), which only the load fills in: the schema accepts such text there
too, so an editor does not flag ``port: ${MQTT_PORT}``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from gateway.config.model import (
    BRIDGE_KEYS,
    ENTRY_KEYS,
    NAME_PATTERN,
    BridgeKeys,
    EntryKeys,
    GatewaySection,
    ShadowSection,
)
from gateway.plugins import Registry

DRAFT = "https://json-schema.org/draft/2020-12/schema"
REFERENCE = {"type": "string", "pattern": r"\$\{", "description": "${NAME} or ${file:PATH}"}
_KEPT_OUTSIDE = ("title", "description", "default", "examples")


def _allow_references(node: Any) -> Any:
    """``node`` with every number, bool and patterned string also accepting a reference."""
    if isinstance(node, list):
        return [_allow_references(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _allow_references(value) for key, value in node.items()}
    kind = node.get("type")
    if kind in ("integer", "number", "boolean") or (kind == "string" and "pattern" in node):
        inner = {k: v for k, v in node.items() if k not in _KEPT_OUTSIDE}
        outer = {k: v for k, v in node.items() if k in _KEPT_OUTSIDE}
        return {**outer, "anyOf": [inner, REFERENCE]}
    return node


def _model_schema(model: type[BaseModel], namespace: str, defs: dict[str, Any]) -> dict[str, Any]:
    """``model``'s schema with its ``$defs`` moved into ``defs`` under ``namespace.``."""
    schema = model.model_json_schema(
        by_alias=True, ref_template=f"#/$defs/{namespace}.{{model}}", mode="validation"
    )
    for name, sub in schema.pop("$defs", {}).items():
        defs[f"{namespace}.{name}"] = sub
    return schema


def _entry_schema(
    name: str,
    spec_model: type[BaseModel],
    roles: tuple[str, ...],
    defs: dict[str, Any],
    *,
    role_required: bool = False,
) -> dict[str, Any]:
    schema = _model_schema(spec_model, f"{name}.{roles[0]}" if role_required else name, defs)
    props: dict[str, Any] = dict(schema.get("properties", {}))
    props["protocol"] = {"const": name, "description": f"protocol plugin {name!r}"}
    if roles:
        props["role"] = {
            "enum": list(roles),
            "default": roles[0],
            "description": "adapter role; default the first",
        }
    props.update(_model_schema(EntryKeys, "entry", defs)["properties"])
    schema["properties"] = props
    required = [r for r in schema.get("required", []) if r not in ENTRY_KEYS]
    schema["required"] = ["protocol", *(["role"] if role_required else []), *required]
    schema["additionalProperties"] = False
    return schema


def _bridge_schema(registry: Registry, defs: dict[str, Any]) -> dict[str, Any]:
    schema = _model_schema(BridgeKeys, "bridge", defs)
    props: dict[str, Any] = dict(schema.get("properties", {}))
    options: dict[str, list[dict[str, Any]]] = {}
    targets = [
        (f"{name}.{role}" if role else name, model)
        for name, spec in sorted(registry.specs.items())
        for role, model in [("", spec.route_model), *spec.route_models.items()]
        if model is not None
    ]
    for name, route_model in targets:
        route = _model_schema(route_model, name, defs)
        for key, sub in route.get("properties", {}).items():
            if key in BRIDGE_KEYS:
                continue  # the loader takes these as the bridge's own keys
            note = f"[{name} target] {sub.get('description', '')}".strip()
            options.setdefault(key, []).append({**sub, "description": note})
    for key, subs in options.items():
        props[key] = subs[0] if len(subs) == 1 else {"anyOf": subs}
    schema["properties"] = props
    schema["additionalProperties"] = False
    schema["description"] = (
        "A route: points of 'from' go to 'to'; the other keys are options of the target's "
        "protocol (see each option's [protocol target] note)."
    )
    return schema


def json_schema(registry: Registry) -> dict[str, Any]:
    """The JSON Schema of a whole config file with the protocols of ``registry``."""
    defs: dict[str, Any] = {}
    entries = []
    for name, spec in sorted(registry.specs.items()):
        if not spec.role_models:
            defs[f"{name}.entry"] = _entry_schema(name, spec.config_model, spec.roles, defs)
            entries.append({"$ref": f"#/$defs/{name}.entry"})
            continue
        for i, role in enumerate(spec.roles):  # one entry per role; all but the default say so
            key = f"{name}.{role}.entry"
            defs[key] = _entry_schema(
                name, spec.model_for(role), (role,), defs, role_required=i > 0
            )
            entries.append({"$ref": f"#/$defs/{key}"})
    defs["entry"] = {
        "type": "object",
        "description": "A connection; 'protocol' picks the plugin that validates the rest.",
        "properties": {"protocol": {"enum": sorted(registry.specs)}},
        "required": ["protocol"],
        "oneOf": entries,
    }
    defs["bridge"] = _bridge_schema(registry, defs)
    section = {
        "type": "object",
        "propertyNames": {"pattern": NAME_PATTERN},
        "additionalProperties": {"$ref": "#/$defs/entry"},
    }
    schema: dict[str, Any] = _allow_references(
        {
            "$schema": DRAFT,
            "title": "Protocol Brain configuration",
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "gateway": _model_schema(GatewaySection, "gateway", defs),
                "devices": {**section, "description": "connections that produce points"},
                "endpoints": {**section, "description": "brokers and servers that consume points"},
                "bridges": {"type": "array", "items": {"$ref": "#/$defs/bridge"}},
                "shadow": _model_schema(ShadowSection, "shadow", defs),
            },
            "$defs": defs,
        }
    )
    return schema
