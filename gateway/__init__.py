"""Protocol Brain: an edge gateway between industrial and IoT protocols."""

__version__ = "0.1.0"
