"""Semantic translator: which Brick point class a point name is, and which point maps to which.

Runs the shipped ONNX model (``models/translator``) with ONNX Runtime; no torch at run time.
"""
