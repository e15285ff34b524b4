"""The ``anomaly:`` option of a bridge; the model lives with the config loader
(`gateway.config.anomaly`), which imports it while it initialises."""

from gateway.config.anomaly import AnomalyOptions

__all__ = ["AnomalyOptions"]
