"""The translator's training side (corpus generator, torch model, training and export) and its
shipped artifacts (``translator.onnx``, ``meta.json``, the Brick vocabulary in ``brick/``)."""
