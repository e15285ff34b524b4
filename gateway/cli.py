"""``gateway`` command line: validate, run, plugins, schema, demo.

Only light modules are imported at the top: ``gateway plugins`` and ``gateway validate`` must be
quick and work where a protocol library is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from gateway import __version__
from gateway.cliargs import path_text, port, positive_float
from gateway.extras import missing_library

log = logging.getLogger("gateway")


def _setup_logging(level: str) -> None:
    from gateway.streak import throttle_noisy_loggers

    logging.basicConfig(
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr
    )
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, HidePasswords) for f in handler.filters):
            handler.addFilter(HidePasswords())
    _set_log_level(level)
    throttle_noisy_loggers()  # a flood of bad packets is a line every 10 s, not one each


class HidePasswords(logging.Filter):
    """On the log's handlers (a logger's filter would not see its children's records): at debug
    level asyncua's client logs each request it sends, the ActivateSession request with the
    user's password in it (``Password=b'...'``, in clear when the server's token policy does not
    encrypt it). The password is replaced, the rest of the line kept."""

    PASSWORD = re.compile(r"""(Password=)b?(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a broken record: its handler reports it, as without this filter
            return True
        if "Password=" in text:
            record.msg, record.args = self.PASSWORD.sub(r"\1<not shown>", text), ()
        return True


def _set_log_level(level: str) -> None:
    chosen = getattr(logging, level.upper(), logging.INFO)
    logging.getLogger().setLevel(chosen)
    # asyncua logs at INFO per node at start, per monitored item a client creates and twice a
    # second per subscribed client ("publish request with acks"): 10,000 lines an hour for one
    # client. Our adapters log what an operator needs; asyncua's own INFO is for debugging.
    library = chosen if chosen <= logging.DEBUG else max(chosen, logging.WARNING)
    logging.getLogger("asyncua").setLevel(library)


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


def _print_warnings(lines: Sequence[str]) -> None:
    """The config's warnings (a refused plugin package, ...) before logging is set up."""
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


def cmd_validate(args: argparse.Namespace) -> int:
    from gateway.config import ConfigError, load_config
    from gateway.text import counted

    try:
        config = load_config(args.file, check_adapters=True)
    except ConfigError as exc:
        _print_warnings(exc.warnings)
        print(str(exc), file=sys.stderr)
        print(f"{args.file}: {counted(len(exc.problems), 'problem')}", file=sys.stderr)
        return 1
    _print_warnings(config.warnings)
    points = sum(len(getattr(e.config, "points", []) or []) for e in config.devices.values())
    devices = counted(len(config.devices), "device or endpoint", "devices and endpoints")
    off = [
        counted(len(names), one, many)
        for names, one, many in (
            (config.disabled, "device or endpoint", "devices and endpoints"),
            (config.disabled_bridges, "bridge", "bridges"),
        )
        if names
    ]
    print(
        f"{args.file}: ok ({devices}, {counted(points, 'point')}, "
        f"{counted(len(config.bridges), 'bridge')}"
        + (f"; disabled: {', '.join(off)}" if off else "")
        + ")"
    )
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from gateway.plugins import load_registry

    registry = load_registry()
    rows: list[dict[str, Any]] = []
    for name, spec in sorted(registry.specs.items()):
        missing = spec.missing_requirements()
        state = "ok" if not missing else f"needs {', '.join(missing)}: {spec.install_hint()}"
        rows.append(
            {
                "name": name,
                "roles": list(spec.roles),
                "capabilities": list(spec.capabilities),
                # a bridge's `to:` in some role (a server's route options are per role)
                "target": any(spec.route_model_for(role) is not None for role in spec.roles),
                "package": spec.dist,
                "status": state,
                "description": spec.description,
            }
        )
    if args.json:
        print(json.dumps({"plugins": rows, "errors": registry.errors}, indent=2))
    else:
        # Each column as wide as its longest entry: a plugin's name can be of any length.
        table = [["protocol", "roles", "capabilities", "status"]]
        table += [
            [r["name"], ",".join(r["roles"]), ",".join(r["capabilities"]), r["status"]]
            for r in rows
        ]
        table += [
            [name, "-", "-", f"error: {err}"] for name, err in sorted(registry.errors.items())
        ]
        widths = [max(len(row[i]) for row in table) for i in range(3)]
        for row in table:
            print(" ".join(f"{cell:<{w}}" for cell, w in zip(row[:3], widths, strict=True)), row[3])
    return 1 if registry.errors else 0


def cmd_schema(args: argparse.Namespace) -> int:
    from gateway.config.schema import json_schema
    from gateway.plugins import load_registry

    print(json.dumps(json_schema(load_registry()), indent=2))
    return 0


def cmd_hash_password(args: argparse.Namespace) -> int:
    """Print a scrypt hash for a `users:` entry; the password never goes into the config."""
    import getpass

    from gateway.passwords import MIN_PASSWORD, hash_password

    if not sys.stdin.isatty():
        try:
            password = sys.stdin.buffer.readline().decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            print("error: the password is not UTF-8 text", file=sys.stderr)
            return 1
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("error: the two passwords differ", file=sys.stderr)
            return 1
    if not password:
        print("error: empty password", file=sys.stderr)
        return 1
    if len(password) < MIN_PASSWORD:
        print(f"error: a password needs at least {MIN_PASSWORD} characters", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.config import ConfigError, load_config
    from gateway.fdlimit import raise_open_files
    from gateway.paths import keep_from_others, use_config_state_dir
    from gateway.plugins import PluginError
    from gateway.runtime import StartError, stuck_tasks
    from gateway.text import counted

    # A SIGHUP before the event loop's handler is installed (a `systemctl reload` or a deploy
    # script right after the start) would end the process, its default action: noted here
    # and applied once the gateway runs.
    early_hup: list[int] = []
    signal.signal(signal.SIGHUP, lambda signum, frame: early_hup.append(signum))
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        _print_warnings(exc.warnings)
        print(str(exc), file=sys.stderr)
        return 1
    use_config_state_dir(args.file)
    _setup_logging(args.log_level or config.gateway.log_level)
    for line in config.warnings:  # once, at warning level: the run goes on
        log.warning("%s", line)
    raise_open_files()
    keep_from_others()

    config_file = os.path.abspath(args.file)

    async def main() -> None:
        from gateway import livestatus
        from gateway.looplag import start_loop_monitor
        from gateway.reload import RunSignals
        from gateway.runtime import Carried, Gateway
        from gateway.sdnotify import Notifier, start_watchdog

        # Under a systemd Type=notify unit: READY=1 once started, STATUS= lines, STOPPING=1,
        # RELOADING=1 on SIGHUP, and WATCHDOG=1 from a task on this loop (a blocked loop
        # stops the pings).
        notifier = Notifier.from_environ()
        signals = RunSignals(lambda: load_config(args.file), notifier)
        signals.install()
        if early_hup:
            asyncio.get_running_loop().call_soon(signals.reload)
        watchdog = start_watchdog(notifier)
        # Names the code that blocks the loop (a plugin's time.sleep) while a gateway runs
        # (start and stop block it by design); it never pings systemd.
        running: list[Gateway] = []  # the gateway of this run, once constructed
        loop_lag = start_loop_monitor(
            active=lambda: (
                bool(running) and running[-1].started.is_set() and not signals.stop.is_set()
            )
        )
        serving_since = time.time()
        current, previous = config, None  # previous: the config that ran before a reload
        carried: Carried | None = None  # what a reload kept running (gateway.handover)
        try:
            while True:
                status_file = livestatus.status_path(current.gateway.name)
                if carried is not None:
                    await carried.narrow(current)
                    if not carried.parts.adapters:
                        await carried.close()
                        carried = None
                try:
                    try:
                        gateway = Gateway(
                            current, notifier=notifier, status_file=status_file,
                            config_file=config_file, loop_monitor=loop_lag, carried=carried,
                            started=serving_since, exclusive=True,
                        )  # fmt: skip
                    except (PluginError, StartError) as exc:  # run() says "failed" itself
                        livestatus.record_refused(
                            status_file, gateway=current.gateway.name, config=config_file,
                            reason=str(exc),
                        )  # fmt: skip
                        raise
                    running[:] = [gateway]
                    try:
                        await gateway.run(signals.stop, signals.take)
                    finally:  # the next one's construction (a reload) is start-up too
                        running.clear()
                        carried = gateway.handed
                except (PluginError, StartError) as exc:
                    if previous is None or signals.quitting:
                        raise
                    # The reloaded config loads but cannot start here (a port in use, a
                    # certificate missing): the one that ran before can, most likely.
                    log.error(
                        "the reloaded config could not start (%s); back to the one before", exc
                    )
                    current, previous = previous, None
                    continue
                reloaded = signals.next_run()
                if reloaded is None:
                    break
                if args.log_level is None:
                    _set_log_level(reloaded.gateway.log_level)
                current, previous = reloaded, current
        finally:
            if carried is not None:  # kept for a start that did not come: stopped now
                await carried.close()
            if watchdog is not None:
                watchdog.cancel()
                await asyncio.gather(watchdog, return_exceptions=True)
            await loop_lag.stop()
            notifier.close()
        stuck = await stuck_tasks()
        if stuck:
            # asyncio.run would wait for them for ever and SIGTERM no longer reaches us.
            logging.getLogger("gateway").error(
                "exiting although %s still running: %s",
                counted(len(stuck), "task"),
                ", ".join(stuck[:10]),
            )
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        finished.set()

    finished = threading.Event()
    try:
        asyncio.run(main())
    except (PluginError, StartError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # A second Ctrl-C after the shutdown finished (asyncio has put Python's handler back
        # by then): the stop was clean, so say so.
        if not finished.is_set():
            raise
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    _setup_logging(args.log_level or "warning")
    from gateway.broker import BrokerError
    from gateway.config import ConfigError
    from gateway.demo import run_demo
    from gateway.plugins import PluginError
    from gateway.runtime import StartError

    try:
        return asyncio.run(
            run_demo(duration=args.duration, mqtt_port=args.mqtt_port, opcua_port=args.opcua_port)
        )
    # A port taken between the demo's check and the bind, or a library of an extra missing
    # (amqtt for the broker, a protocol's): one line, as `gateway run` says it.
    except (BrokerError, ConfigError, PluginError, StartError) as exc:
        raise CommandError(str(exc), 1) from None


# Commands that live next to the feature they drive; each module has register(subparsers) and
# must stay light to import (heavy imports go inside the command function).
FEATURE_COMMANDS = (
    "gateway.shadow.cli",
    "gateway.uplink.cli",
    "gateway.translator.cli",
    "gateway.anomaly.cli",
    "gateway.optimizer.cli",
    "gateway.scan",
)


def _register_feature_commands(sub: Any) -> None:
    import importlib

    for name in FEATURE_COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue  # that feature is not in this build
            raise
        module.register(sub)


LOG_LEVELS = ["debug", "info", "warning", "error"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="Protocol Brain edge gateway: bridges Modbus TCP, OPC UA, CoAP and MQTT "
        "devices and endpoints, declared in one YAML config.",
    )
    parser.add_argument("--version", action="version", version=f"protocol-brain {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "validate",
        help="check a config file without connecting anything",
        description="Check a config file without connecting to anything. Every problem is "
        "reported at once, with file, line and column, the key path, what was found and what "
        "was expected; exit 1 if there is any.",
    )
    p.add_argument("file", type=path_text, help="the gateway's YAML config")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "run",
        help="run the gateway from a config file until SIGINT/SIGTERM",
        description="Run the gateway from a config file: poll and subscribe to its devices and "
        "serve or publish their points through its endpoints and bridges, until SIGINT or "
        "SIGTERM, then shut down cleanly. The state folder ({state} in its paths: outboxes, "
        "certificates) is .protocol-brain next to the config unless $PROTOCOL_BRAIN_STATE_DIR "
        "says otherwise.",
    )
    p.add_argument("file", type=path_text, help="the gateway's YAML config")
    p.add_argument(
        "--log-level", choices=LOG_LEVELS, help="default: the config's gateway.log_level (info)"
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "plugins",
        help="list installed protocols, roles and capabilities",
        description="List the protocols installed (built in or from plugin packages) with "
        "their roles and capabilities, and for one whose library is missing, the pip install "
        "line that brings it. Exit 1 if a plugin could not be loaded.",
    )
    p.add_argument("--json", action="store_true", help="print the list and load errors as JSON")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser(
        "schema",
        help="print the JSON Schema of the config file (for editors)",
        description="Print the JSON Schema of the config file, the installed protocols "
        "included, for completion and checking in an editor.",
    )
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser(
        "hash-password",
        help="hash a password for a users: entry (reads stdin or prompts)",
        description="Print a scrypt hash of a password for the password_hash of an OPC UA "
        "server's users: entry, so that the password never goes into the config. Reads one "
        "line from standard input when it is not a terminal, else prompts twice; a password "
        "needs at least 8 characters.",
    )
    p.set_defaults(func=cmd_hash_password)

    p = sub.add_parser(
        "demo",
        help="a simulated Modbus device through the gateway to MQTT and OPC UA, with a shadow",
        description="A simulated Modbus boiler polled by the gateway, published to an embedded "
        "MQTT broker and served by the gateway's OPC UA server (writes go back to the device), "
        "with a device shadow. Prints the readings that made the round trip through the broker "
        "and the commands to watch it with. Its config, shadow and outboxes are in a temporary "
        "folder removed when it stops.",
    )
    p.add_argument(
        "--duration",
        type=positive_float,
        default=None,
        help="seconds to run once the gateway is up; default until Ctrl-C",
    )
    p.add_argument(
        "--mqtt-port",
        type=port,
        default=1883,
        help="embedded broker port (default %(default)s; a free one if taken)",
    )
    p.add_argument(
        "--opcua-port",
        type=port,
        default=4840,
        help="OPC UA server port (default %(default)s; a free one if taken)",
    )
    p.add_argument("--log-level", choices=LOG_LEVELS, help="default: warning")
    p.set_defaults(func=cmd_demo)
    _register_feature_commands(sub)
    return parser


class CommandError(Exception):
    """A command's failure, said in one line: ``error: <message>`` on stderr, exit ``code``.

    Feature commands (shadow, translator, anomaly, optimizer) raise it for bad input instead of
    each printing and returning its own exit code."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args))
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as exc:  # an optional library: say which extra brings it
        needs = missing_library(exc)
        if needs is None:
            raise
        print(f"error: {needs}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader closed the pipe (`gateway classify big.csv | head`): stop quietly, as Unix
        # tools do, and keep the interpreter's final flush from raising a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except OSError as exc:  # the system refused a file or the output (a full disk): one line
        print(f"error: {exc}", file=sys.stderr)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the final flush too
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
