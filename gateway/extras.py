"""The extra of ``protocol-brain`` that installs each optional library (pyproject.toml), and the
one line that says so when one is missing: ``needs numpy: pip install 'protocol-brain[ml]'``.

Used where a missing library would otherwise be a ModuleNotFoundError traceback: the CLI's
``main()`` for every command, and a bridge whose stages need the ``[ml]`` extra."""

from __future__ import annotations

EXTRAS = {
    "numpy": "ml",
    "onnxruntime": "ml",
    "rapidfuzz": "ml",
    "asyncua": "opcua",
    "paho": "mqtt",
    "torch": "train",
    "onnx": "train",
}


def missing_library(exc: ModuleNotFoundError) -> str | None:
    """What to install for ``exc``, if it is an optional library; None for any other module
    (a bug or a broken install, whose traceback is worth seeing)."""
    module = (exc.name or "").partition(".")[0]
    extra = EXTRAS.get(module)
    return None if extra is None else f"needs {module}: pip install 'protocol-brain[{extra}]'"
