"""The ``translate`` bridge transform: the last step of a bridge, after points and units.

``map`` mode renames the points of an approved map and drops the rest. ``auto`` mode also
classifies any point it has not seen before (say a new JSON field on an MQTT topic): with a class
probability at or above the threshold the point goes on as ``<BrickClass>.<name>`` (the canonical
namespace; the name keeps two points of one class apart), below it the sample is published on
``<review_topic>/<device>`` as an event carrying the model's top suggestions, and not forwarded.
Each new name is classified once; the decision is cached, so the per-sample cost is a dict look-up.

The bridge also hands the target a review event the first time a device's point is held back
(`Translate.route`), so that whoever approves the suggestions sees them where the data goes: an
MQTT target publishes `review_document` of each point on ``<review_topic>/<device>``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Container
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gateway.types import Message, MessageKind, Sample

if TYPE_CHECKING:
    from gateway.bus import Bus
    from gateway.config.translate import TranslateConfig

log = logging.getLogger(__name__)

LOGGED_NAMES = 5  # new names said one line each; more in one batch are one summary line


class Translate:
    def __init__(
        self,
        config: TranslateConfig,
        bus: Bus | None = None,
        *,
        classifier: Callable[[list[str]], list[list[tuple[str, float]]]] | None = None,
    ) -> None:
        self.config = config
        self.bus = bus
        self.map = dict(config.map)
        self.auto = config.mode == "auto"
        self._classifier = classifier
        self._decided: dict[str, str | None] = {}
        self.suggestions: dict[str, list[tuple[str, float]]] = {}
        self.reviewed = 0
        self._announced: set[tuple[str, str]] = set()  # (device, point) handed to the target

    def prepare(self) -> None:
        """Load the classifier now (auto mode), so that a model or examples file that cannot be
        used stops the start instead of failing at the first new point."""
        if self.auto and self._classifier is None:
            self._classifier = self._load()

    def target_name(self, name: str) -> str | None:
        """The name the target sees for a source point known now (None: not forwarded yet)."""
        if name in self.map:
            return self.map[name]
        return self._decided.get(name) if self.auto else None

    def source_name(self, name: str, has: Container[str] | None = None) -> str | None:
        """The source point behind a target-side name (for writes), or None; with ``has``
        (the device's point names), the one that device has: devices of one bridge may
        spell a point differently and share its target name."""
        for src, tgt in self.map.items():
            if tgt == name and (has is None or src in has):
                return src
        if self.auto:
            for src, decided in self._decided.items():
                if decided == name:
                    return src
        return None

    def _classify(self, names: list[str]) -> list[list[tuple[str, float]]]:
        if self._classifier is None:
            self._classifier = self._load()
        return self._classifier(names)

    def _load(self) -> Callable[[list[str]], list[list[tuple[str, float]]]]:
        from gateway.translator.fewshot import FewShot, known_to
        from gateway.translator.model import load, top_k
        from gateway.translator.pointlist import read_labeled_known
        from gateway.translator.tokenize import Point

        model = self.config.model
        translator = load() if model == "builtin" else load(model)
        adapt: Any = None
        if self.config.examples:
            labeled = read_labeled_known(self.config.examples)
            if note := labeled.note(self.config.examples):
                log.warning("translate: %s", note)
            kept, left = known_to(translator, labeled.points)
            if left:
                log.warning(
                    "translate: %s: left out the examples of classes the model does not score:"
                    " %s",
                    self.config.examples, ", ".join(left[:5]),
                )  # fmt: skip
            if not kept:
                raise ValueError(f"{self.config.examples}: no example of a class the model scores")
            adapt = FewShot.fit(translator, kept)

        def classify(names: list[str]) -> list[list[tuple[str, float]]]:
            points = [Point(n) for n in names]
            pred = adapt.predict(points) if adapt is not None else translator.predict(points)
            return top_k(pred.probs, translator.classes, 3)

        return classify

    def _decide(self, names: list[str]) -> None:
        said: list[str] = []
        held = 0
        for name, top in zip(names, self._classify(names), strict=True):
            cls, score = top[0]
            self.suggestions[name] = top
            if score >= self.config.threshold:
                self._decided[name] = f"{cls}.{name}"
                said.append(f"{name} -> {cls} ({score:.2f})")
            else:
                self._decided[name] = None
                held += 1
                said.append(f"{name} needs review (best {cls} {score:.2f})")
        # One line per batch of new names: a payload of 500 new keys was 500 log lines.
        if len(said) <= LOGGED_NAMES:
            for line in said:
                log.info("translate: %s", line)
            return
        log.info(
            "translate: %d new points, %d forwarded, %d held for review; first %d: %s",
            len(said), len(said) - held, held, LOGGED_NAMES, "; ".join(said[:LOGGED_NAMES]),
        )  # fmt: skip

    def apply(self, device: str, samples: tuple[Sample, ...]) -> tuple[Sample, ...]:
        """The samples forwarded (renamed); held-back ones go to the bus as review events."""
        return self.route(device, samples)[0]

    def route(
        self, device: str, samples: tuple[Sample, ...]
    ) -> tuple[tuple[Sample, ...], Message | None]:
        """`apply`, and the review event for the bridge's target: the points of ``device``
        held back for the first time (None when there are none)."""
        if self.auto:
            new = [s.point for s in samples if s.point not in self.map]
            new = [n for n in dict.fromkeys(new) if n not in self._decided]
            if new:
                self._decide(new)
        out: list[Sample] = []
        review: list[Sample] = []
        for s in samples:
            name: str | None = self.map.get(s.point)
            if name is None and self.auto:
                name = self._decided.get(s.point)
                if name is None:
                    review.append(s)
                    continue
            if name is None:
                continue
            out.append(s if name == s.point else replace(s, point=name))
        if not review:
            return tuple(out), None
        self.reviewed += len(review)
        if self.bus is not None:
            self.bus.publish_nowait(self._review_event(device, review))
        first = [s for s in review if (device, s.point) not in self._announced]
        self._announced.update((device, s.point) for s in first)
        return tuple(out), self._review_event(device, first) if first else None

    def _review_event(self, device: str, review: list[Sample]) -> Message:
        return Message(
            topic=f"{self.config.review_topic}/{device}",
            kind=MessageKind.EVENT,
            samples=tuple(review),
            origin="translator",
            device=device,
            meta={
                "suggestions": {s.point: self.suggestions[s.point] for s in review},
                "threshold": self.config.threshold,
            },
        )


def review_document(event: Message, sample: Sample) -> dict[str, Any]:
    """What an integrator reads about one held-back point of a review event: the device, the
    point, its value and time, and the model's best classes with their probabilities."""
    value = sample.value
    if isinstance(value, float) and not math.isfinite(value):
        value = None  # JSON has no spelling for it
    ts = sample.source_ts or sample.gateway_ts
    return {
        "device": event.device,
        "point": sample.point,
        "value": value,
        "ts": datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
        "threshold": event.meta.get("threshold"),
        "suggestions": [
            {"class": cls, "score": round(score, 4)}
            for cls, score in event.meta["suggestions"][sample.point]
        ],
    }
