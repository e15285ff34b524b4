"""``gateway demo``: a simulated Modbus device -> the gateway -> an embedded MQTT broker, the
same device served as an OPC UA server, and a device shadow.

Nothing to install by hand: the device is the project's simulator and the broker is an embedded
Python broker (fine for a demo; production points at mosquitto or another real broker). The demo
watches the broker through the gateway's own MQTT subscription, so what it prints has made the
whole round trip: Modbus poll, bus, bridge, MQTT publish, broker, MQTT subscribe, bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import socket
import sys
import tempfile
import time
from pathlib import Path

from gateway import livestatus
from gateway.paths import use_config_state_dir
from gateway.text import counted

DEMO_CONFIG = """\
# The config `gateway demo` runs (ports filled in when it starts).
gateway: {{name: demo}}
devices:
  boiler:
    protocol: modbus
    host: 127.0.0.1
    port: {modbus_port}
    poll_groups: {{fast: {{interval: 1}}}}
    points:
      - {{name: temperature, table: holding, address: 0, type: float32, unit: degC, poll: fast,
         deadband: {{absolute: 0.05}}}}
      - {{name: cycles, table: holding, address: 2, type: uint32, poll: fast}}
      - {{name: vibration, table: holding, address: 4, type: int16, scale: 0.001, unit: mm/s,
         poll: fast}}
      - {{name: pressure, table: input, address: 0, type: float32, unit: bar, poll: fast,
         deadband: {{absolute: 0.01}}}}
      - {{name: pump_running, table: coil, address: 0, poll: fast}}
      - {{name: setpoint, table: holding, address: 10, type: float32, unit: degC, access: rw,
         low: 0, high: 90, poll: fast}}
endpoints:
  broker:
    protocol: mqtt
    host: 127.0.0.1
    port: {mqtt_port}
    status_topic: "demo/{{gateway}}/status"
  watch:                       # the demo's own eyes: subscribes to what the bridge publishes
    protocol: mqtt
    host: 127.0.0.1
    port: {mqtt_port}
    status_topic: "demo/{{gateway}}/watcher"
    subscriptions: [{{topic: "plant/#", qos: 1}}]
  opcua:                       # the same device as an OPC UA server, writes go back to Modbus
    protocol: opcua
    role: server
    host: 127.0.0.1
    port: {opcua_port}
    security:
      allow_none: true         # demo only: lets any client in without certificates
      pki_dir: "{pki_dir}"
    anonymous: true            # demo only: read without a user
    users: [{{username: demo, password_hash: "{demo_hash}", access: write}}]
bridges:
  - name: boiler-up
    from: boiler
    to: broker
    units: {{temperature: degF}}
    topic: "plant/{{device}}/{{point}}"
    payload: sample
    qos: 1
    computed:                  # from this reading and the shadow's last values
      - {{name: setpoint_error, expr: "temperature - setpoint", unit: K}}
  - name: boiler-opcua
    from: boiler
    to: opcua
    folder: Boiler
shadow:                        # reported/desired state and history per device
  path: shadow.db
"""


def gateway_command() -> str:
    """The `gateway` command as this process was started, runnable from any shell.

    ./scripts/demo.sh runs .venv/bin/gateway, which is not on the PATH of the shell a user
    copies the printed commands into: name the script by its absolute path, or the interpreter.
    """
    script = Path(sys.argv[0])
    if script.name == "gateway" and script.is_file():
        return shlex.quote(str(script.absolute()))
    return f"{shlex.quote(sys.executable)} -m gateway"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def run_demo(
    duration: float | None = None, mqtt_port: int = 1883, opcua_port: int = 4840
) -> int:
    from gateway.broker import EmbeddedBroker
    from gateway.cli import install_stop_signals
    from gateway.config import load_config_text
    from gateway.passwords import hash_password
    from gateway.runtime import Gateway
    from protocols.modbus.codec import DataType
    from protocols.modbus.simulator import Simulator

    out = sys.stdout
    if not _port_free(mqtt_port):
        print(f"port {mqtt_port} is taken (a broker already running?); using a free port", file=out)
        mqtt_port = 0
    if opcua_port == 0:
        opcua_port = _free_port()
    elif not _port_free(opcua_port):
        print(f"port {opcua_port} is taken; serving OPC UA on a free port", file=out)
        opcua_port = _free_port()
    workdir = Path(tempfile.gettempdir()) / "protocol-brain-demo"
    workdir.mkdir(exist_ok=True)
    # The demo's config, shadow store and MQTT outbox are its own, for this run only: not in
    # the user's folder, and not shared with another demo running beside it (an outbox belongs
    # to one process). Only the OPC UA certificates (slow to make) are kept for the next run.
    # The state folder is the one `gateway run` would use for this config (.protocol-brain next
    # to it, unless $PROTOCOL_BRAIN_STATE_DIR says otherwise), so `gateway status CONFIG` finds
    # the outboxes while the demo runs.
    async with contextlib.AsyncExitStack() as stack:
        run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="run-", dir=workdir)))
        config_path = run_dir / "demo.yaml"
        use_config_state_dir(config_path)
        broker = await stack.enter_async_context(EmbeddedBroker("127.0.0.1", mqtt_port))
        sim = await stack.enter_async_context(Simulator())
        device = await sim.add_device(port=0, name="boiler")
        sim.animate(device, period=1.0)
        device.set_value("holding", 10, 60.0, DataType.FLOAT32)
        text = DEMO_CONFIG.format(
            modbus_port=device.port,
            mqtt_port=broker.port,
            opcua_port=opcua_port,
            pki_dir=workdir / "pki",
            demo_hash=hash_password("demo"),
        )
        config_path.write_text(text)
        config = load_config_text(text, str(config_path))
        gateway = Gateway(
            config,
            status_file=livestatus.status_path(config.gateway.name),
            config_file=str(config_path),
        )
        watched = gateway.bus.subscribe("mqtt/watch/#", maxsize=1000, name="demo-printer")

        cmd, config_arg = gateway_command(), shlex.quote(str(config_path))
        print(
            "Protocol Brain demo\n"
            f"  Modbus device (simulated)  127.0.0.1:{device.port}, unit 1\n"
            f"  MQTT broker (embedded)     127.0.0.1:{broker.port}\n"
            f"  OPC UA server              opc.tcp://127.0.0.1:{opcua_port}/protocol-brain"
            " (None endpoint, anonymous read; user demo / demo may write Boiler/setpoint)\n"
            f"  config                     {config_path}\n"
            "Watch it yourself:\n"
            f"  mosquitto_sub -h 127.0.0.1 -p {broker.port} -t 'plant/#' -v\n"
            f"  mbpoll -m tcp -p {device.port} -0 -t 4:float -B -r 0 -c 1 127.0.0.1\n"
            f"  {cmd} shadow get boiler --config {config_arg}\n"
            f"  {cmd} shadow set boiler setpoint=65 --config {config_arg}\n"
            f"  {cmd} status {config_arg}\n"
            "Readings that reached the broker and came back (Ctrl-C to stop):",
            file=out,
            flush=True,
        )

        stop = asyncio.Event()
        install_stop_signals(stop)

        async def stop_after(seconds: float) -> None:
            # Counted from when the gateway runs: starting the OPC UA server alone can take
            # seconds on a loaded box, and a short demo would then show nothing.
            await gateway.started.wait()
            await asyncio.sleep(seconds)
            stop.set()

        async def show() -> None:
            async for message in watched:
                for s in message.samples:
                    value = s.value
                    if isinstance(value, dict):
                        shown = json.dumps(value.get("value"))
                        extra = f" {value.get('unit', '')} [{value.get('quality')}]"
                    else:
                        shown, extra = json.dumps(value), f" {s.unit}" if s.unit else ""
                    stamp = time.strftime("%H:%M:%S")
                    print(f"  {stamp}  {s.point:<28} {shown}{extra}", file=out, flush=True)

        helpers = [asyncio.create_task(show())]
        if duration is not None:
            helpers.append(asyncio.create_task(stop_after(duration)))
        try:
            await gateway.run(stop)
        finally:
            for task in helpers:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        status = gateway.status()
        published = status["adapters"]["broker"].get("published", 0)
        print(f"stopped: {counted(published, 'MQTT message')} published", file=out)
    return 0
