"""The anomaly model: training (torch), evaluation (SKAB protocol), and the shipped
``teacher.onnx`` / ``student.onnx`` (see docs/anomaly.md)."""
