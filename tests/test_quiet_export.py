"""`models.quiet.quiet_export`: the train commands do not show library hints a user cannot act
on, and still show everything else."""

from __future__ import annotations

import logging
import warnings

import pytest

from models.quiet import quiet_export


def test_only_the_known_hints_are_left_out(caplog: pytest.LogCaptureFixture) -> None:
    from torch.jit import TracerWarning  # type: ignore[attr-defined]  # the [train] extra

    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_export():
            logging.warning("Please consider to run pre-processing before quantization. Refer")
            logging.warning("Please consider pre-processing before quantization. See https:")
            logging.warning("something else went wrong")
            warnings.warn("converting a tensor to a Python boolean", TracerWarning, stacklevel=1)
            warnings.warn("a real problem", UserWarning, stacklevel=1)
        logging.warning("Please consider to run pre-processing before quantization (after)")
    assert [r.getMessage() for r in caplog.records] == [
        "something else went wrong",
        "Please consider to run pre-processing before quantization (after)",
    ]
    assert [str(w.message) for w in seen] == ["a real problem"]
    assert not logging.getLogger().filters  # the filter is gone again
