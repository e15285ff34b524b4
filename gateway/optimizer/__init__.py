"""Uplink packet optimizer: decides how northbound publishes go (batch, deadline, compression,
QoS, in-flight window) from what the uplink sees on the link.

Runtime only (numpy + ONNX Runtime, imported lazily): the learned policy is trained by
``models.optimizer`` and shipped as ONNX; `heuristic` is the fallback when no model is set.
"""

from gateway.optimizer.actions import ACTION_DIMS, Decision, decode
from gateway.optimizer.features import LinkStats, observation

__all__ = ["ACTION_DIMS", "Decision", "LinkStats", "decode", "observation"]
