"""Free-text held-out names from a generator of their own, to check zero-shot changes.

Written apart from `corpus.py` (own word table, own templates with filler words such as "of" and
"for", own equipment words), so that a corpus change is not judged only on names its own
generator draws. Classes are drawn uniformly. Run:

    python -m models.translator.heldout [MODEL.onnx ...]

prints one JSON line per model: top-1 and top-5 on 3,000 free-text names (seed 4242) and on
synthetic sites (`sites.site`, seeds 100-103, 400 points, 50 classes).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np

from gateway.translator.tokenize import Point
from gateway.translator.vocab import MODEL_DIR, brick_classes, same_class

WORDS = {
    "supply": ["supply", "supply", "discharge", "sply", "supp"],
    "return": ["return", "return", "retrn", "ret"],
    "outside": ["outside", "outdoor", "exterior"],
    "zone": ["zone", "room", "space", "area"],
    "temperature": ["temperature", "temp", "temp", "tmp"],
    "setpoint": ["setpoint", "set point", "sp", "setting"],
    "command": ["command", "cmd", "control", "ctl"],
    "status": ["status", "status", "stat", "state"],
    "alarm": ["alarm", "alarm", "alrm"],
    "sensor": ["sensor", "", "", "sens"],
    "humidity": ["humidity", "hum", "rh"],
    "pressure": ["pressure", "pres"],
    "position": ["position", "pos", "percent"],
    "valve": ["valve", "vlv"],
    "damper": ["damper", "dmp"],
    "water": ["water", "wtr"],
    "chilled": ["chilled", "chw"],
    "power": ["power", "kw", "demand"],
    "energy": ["energy", "kwh", "consumption"],
    "leaving": ["leaving", "supply", "outlet"],
    "entering": ["entering", "return", "inlet"],
}
EQUIP = [
    "fan coil",
    "fcu",
    "air handler",
    "ahu",
    "vav",
    "chiller",
    "pump",
    "meter",
    "panel",
    "terminal unit",
    "rooftop",
    "zone",
    "boiler",
    "exhaust fan",
]
TEMPLATES = [
    "{w}",
    "{e} {n} {w}",
    "{e}{n} {w}",
    "{w} {e} {n}",
    "{w} of {e} {n}",
    "{e} {n} - {w}",
    "{w} ({e}{n})",
    "{e}-{n} {w}",
    "{w} for {e} {n}",
    "floor {f} {e} {n} {w}",
]


def free_text(seed: int, n: int) -> list[tuple[Point, str]]:
    r = random.Random(seed)
    classes = brick_classes()
    out = []
    for _ in range(n):
        c = r.choice(classes)
        ws = [r.choice(WORDS.get(w, [w])) for w in c.name.lower().split("_")]
        w = " ".join(x for x in ws if x)
        name = r.choice(TEMPLATES).format(
            w=w, e=r.choice(EQUIP), n=r.randint(1, 40), f=r.randint(1, 12)
        )
        style = r.random()
        name = name.lower() if style < 0.6 else name.title() if style < 0.85 else name.upper()
        out.append((Point(name), c.name))
    return out


def score(model: Path, data: list[tuple[Point, str]]) -> dict[str, float]:
    from gateway.translator.model import Translator

    t = Translator(model)
    probs = t.predict([p for p, _ in data]).probs
    top = np.argsort(-probs, 1)[:, :5]
    hit1 = [same_class(t.classes[row[0]], c) for row, (_, c) in zip(top, data, strict=True)]
    hit5 = [
        any(same_class(t.classes[j], c) for j in row) for row, (_, c) in zip(top, data, strict=True)
    ]
    return {"top1": round(float(np.mean(hit1)), 4), "top5": round(float(np.mean(hit5)), 4)}


def main(argv: list[str]) -> None:
    from models.translator.sites import site

    models = [Path(a) for a in argv] or [MODEL_DIR / "translator.onnx"]
    texts = free_text(4242, 3000)
    sites = [x for s in range(100, 104) for x in site(s, 400, 50)]
    for m in models:
        print(json.dumps({"model": str(m), "free_text": score(m, texts), "sites": score(m, sites)}))


if __name__ == "__main__":
    main(sys.argv[1:])
