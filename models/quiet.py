"""Quiet export: the library warnings a `train` command's user cannot act on, left out."""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator

# ONNX Runtime's quantizer logs this on the root logger for every model ("Please consider to
# run pre-processing ..." from quantize_dynamic, "Please consider pre-processing ..." from
# quantize_static); these graphs are exported by torch already shape-inferred, and the int8
# checks measure what quantization costs.
_ORT_PREPROCESS = re.compile(r"Please consider (to run )?pre-processing before quantization")


class _DropPreprocessHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _ORT_PREPROCESS.match(record.getMessage()) is None


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """Around torch.onnx.export and ORT quantization: torch's TracerWarnings (a Python number
    taken from a tensor is a constant in the trace: intended here, the shapes are dynamic axes)
    and ORT's pre-processing hint are not shown; other warnings are."""
    hint = _DropPreprocessHint()
    root = logging.getLogger()
    root.addFilter(hint)
    try:
        with warnings.catch_warnings():
            try:
                from torch.jit import TracerWarning  # type: ignore[attr-defined]
            except ImportError:  # quantization alone runs without torch
                pass
            else:
                warnings.simplefilter("ignore", TracerWarning)
            yield
    finally:
        root.removeFilter(hint)
