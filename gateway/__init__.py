"""Protocol Brain: an edge gateway between industrial and IoT protocols."""

import os

# ONNX Runtime (1.31 on Linux) records a device id under ~/.cache and a session file in the
# temporary folder, and may report usage to Microsoft's collector, unless this is set before it
# loads. A gateway on a plant network sends nothing its config does not name: off, unless the
# user's environment says otherwise. Here, so that every import of onnxruntime comes after it.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
