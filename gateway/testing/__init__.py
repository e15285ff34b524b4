"""Test kit for protocol plugins: the conformance checks every built-in protocol passes.

Import it from a plugin's tests (it needs pytest)::

    from gateway.testing import ProtocolConformance, closed_port

See `gateway.testing.conformance` and docs/plugins.md.
"""

from gateway.testing.conformance import DATATYPES, ProtocolConformance, closed_port

__all__ = ["DATATYPES", "ProtocolConformance", "closed_port"]
