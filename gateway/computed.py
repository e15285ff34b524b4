"""Computed points of a bridge: values derived from a device's points and its shadow.

```yaml
bridges:
  - name: up
    from: pump
    to: broker
    computed:
      - {name: head_m, expr: "(outlet_kpa - inlet_kpa) / 9.81", unit: m}
      - {name: speed_error, expr: "speed - shadow.desired.speed", unit: rpm}
```

A computed point is evaluated for a message of its device when the message carries at least
one of the points it names (so it follows fresh readings, and a point polled every 10 s does
not hold back one polled every 100 ms). A named point missing from the message is taken from
the device's shadow (``reported``: its last good or uncertain value), which is what makes the shadow
context for bridges; ``shadow.reported.<key>`` and ``shadow.desired.<key>`` read it directly.
Where the shadow has no value (no ``shadow:`` section, a device it does not keep) the bridge's
own memory of each device's last reading of the points its expressions name serves instead, so
inputs polled in different groups still combine.
When a value is missing everywhere, or the arithmetic fails (a division by zero), the point is
skipped for that message and counted; the rest of the message goes on.

Quality: the worst quality of the inputs taken from the message, and ``uncertain`` when an
input came from the shadow (or the remembered readings) while that point's last reading was not
good.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.config.computed import ComputedPoint
from gateway.expressions import Expression, compile_expression
from gateway.types import PointSpec, Quality, Sample

if TYPE_CHECKING:
    from gateway.shadow.store import ShadowDocument

log = logging.getLogger(__name__)

__all__ = ["ComputedPoint", "ComputedPoints", "ShadowState"]

ShadowState = Callable[[str], "ShadowDocument | None"]
_RANK = {Quality.GOOD: 0, Quality.UNCERTAIN: 1, Quality.BAD: 2}


class _Missing(Exception):
    pass


class ComputedPoints:
    """Evaluates a bridge's computed points for each message (see the module doc)."""

    def __init__(self, points: list[ComputedPoint], state: ShadowState | None = None) -> None:
        self._points: list[tuple[ComputedPoint, Expression]] = [
            (p, compile_expression(p.expr)) for p in points
        ]
        self.state = state  # set by the runtime once the shadow service exists
        self.computed = 0
        self.skipped = 0
        self._warned: set[str] = set()
        self._inputs = frozenset(n for _, e in self._points for n in e.points)
        # Without a shadow: device -> input point -> its last reading with a value.
        self._last: dict[str, dict[str, Sample]] = {}

    def specs(self, device: str) -> list[PointSpec]:
        return [p.spec(device) for p, _ in self._points]

    def apply(self, device: str, samples: tuple[Sample, ...]) -> tuple[Sample, ...]:
        """The computed samples for this message of ``device`` (possibly none)."""
        if not self._points or not samples:
            return ()
        here = {s.point: s for s in samples}
        doc = self.state(device) if self.state is not None else None
        last = self._last.setdefault(device, {})
        for name in self._inputs & here.keys():
            if here[name].value is not None:
                last[name] = here[name]
        out: list[Sample] = []
        for point, expr in self._points:
            if expr.points and not expr.points & here.keys():
                continue  # none of its inputs is fresh: nothing new to say
            quality = Quality.GOOD
            newest = 0.0

            def value(name: str) -> Any:
                nonlocal quality, newest
                if name.startswith("shadow."):
                    section, _, key = name[len("shadow.") :].partition(".")
                    found = None if doc is None else getattr(doc, section).get(key)
                    if found is None:
                        raise _Missing(name)
                    return found
                sample = here.get(name)
                if sample is not None and sample.value is not None:
                    if _RANK[sample.quality] > _RANK[quality]:
                        quality = sample.quality
                    newest = max(newest, sample.source_ts)
                    return sample.value
                found = None if doc is None else doc.reported.get(name)
                if found is None:  # no shadow (or none for this device): what this bridge saw
                    kept = last.get(name)
                    if kept is None:
                        raise _Missing(name)
                    if kept.quality is not Quality.GOOD or sample is not None:  # now failing
                        quality = max(quality, Quality.UNCERTAIN, key=_RANK.__getitem__)
                    return kept.value
                if doc is not None and doc.quality.get(name, "good") != "good":
                    quality = max(quality, Quality.UNCERTAIN, key=_RANK.__getitem__)
                return found

            try:
                result = expr(value)
            except _Missing as exc:
                self._skip(point.name, f"no value for {exc.args[0]} yet")
                continue
            except (ArithmeticError, TypeError, ValueError) as exc:
                self._skip(point.name, f"{type(exc).__name__}: {exc}")
                continue
            out.append(
                Sample.now(
                    point.name,
                    float(f"{float(result):.12g}"),  # no float noise (as unit conversion)
                    quality,
                    unit=point.unit,
                    source_ts=newest or None,
                )
            )
            self.computed += 1
        return tuple(out)

    def _skip(self, name: str, why: str) -> None:
        self.skipped += 1
        if name not in self._warned:  # once per point: a steady cause must not flood the log
            self._warned.add(name)
            log.warning("computed point %s skipped: %s (said once)", name, why)

    def status(self) -> dict[str, int]:
        return {"computed": self.computed, "skipped": self.skipped}
