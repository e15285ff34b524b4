"""Device shadow: reported / desired / delta per device, versions, history (issue 5).

`gateway.shadow.store` is the sans-network part (SQLite); `gateway.shadow.service` connects it to
the bus, the write path and MQTT. This package imports neither at import time, so the CLI stays
light.
"""
