"""Local anomaly scoring: a small autoencoder (ONNX Runtime) scores every numeric sample of a
bridge's source devices, calibrated per device; alarms are bus events with hysteresis.

`core` holds the numbers (shared with training and evaluation), `model` the ONNX session,
`alarm` the hysteresis, `stage` the bridge stage, `options` the ``anomaly:`` config key.
"""
