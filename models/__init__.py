"""Learned parts of the gateway (translator, packet optimizer, anomaly scorer): training and
evaluation code. Importing it turns ONNX Runtime's telemetry off as `gateway` does."""

import gateway  # noqa: F401  (sets ORT_DISABLE_TELEMETRY before onnxruntime loads)
