"""``${NAME}``, ``${NAME:-default}`` and ``${file:PATH}`` in config values (secrets out of the
YAML): resolution, the problems it reports with their place, secrets never shown in a message,
offline commands that run without the service's secrets, and a real mosquitto that only lets
the gateway in with the password it got from a file, read again on SIGHUP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import HOST, MosquittoBroker, find_binary, mqtt_endpoint_yaml, reaped

from gateway.cli import main
from gateway.config import ConfigError, load_config
from gateway.config.references import MAX_FILE_BYTES, Lookup, UnresolvedReference, resolve
from gateway.config.yamlmarks import parse_yaml

SECRET = "s3cret-from-the-vault"


def endpoint_config(tmp_path: Path, password: str, port: str = "1883", extra: str = "") -> Path:
    config = tmp_path / "gw.yaml"
    config.write_text("gateway: {name: refs}\n" + mqtt_endpoint_yaml(port, password, extra))
    return config


def broker_settings(config: Path) -> tuple[int, str | None]:
    settings = load_config(config).devices["broker"].config
    return settings.port, settings.password  # type: ignore[attr-defined]


def problems(config: Path, **kwargs: bool) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(config, **kwargs)
    return [str(p) for p in caught.value.problems]


def lookup(env: dict[str, str], files: dict[str, str] | None = None) -> Lookup:
    def read(path: str) -> str:
        if files is None or path not in files:
            raise UnresolvedReference(f"no file {path}", "a file")
        return files[path]

    return Lookup(env.get, read)


def test_variables_defaults_escapes_and_files_resolve() -> None:
    env = {"USER_": "gw", "EMPTY": "", "DIR": "/run/creds"}
    files = {"/run/creds/mqtt": "pw-from-file\n", "crlf": "line\r\n", "two": "a\n\n"}
    cases = {
        "${USER_}": "gw",
        "u=${USER_}, again ${USER_}": "u=gw, again gw",
        "${UNSET:-fallback}": "fallback",
        "${EMPTY:-fallback}": "fallback",  # as in the shell: empty counts as unset
        "${UNSET:-}": "",
        "$${USER_} costs $5": "${USER_} costs $5",
        "${file:${DIR}/mqtt}": "pw-from-file",
        "${file:crlf}": "line",
        "${file:two}": "a\n",  # one line end off, not every blank line
    }
    for text, expected in cases.items():
        assert resolve(text, lookup(env, files)).value == expected, text


def test_what_a_variable_or_a_file_holds_is_copied_as_it_is_never_read_again() -> None:
    """A password may hold ``${``; a variable must not make the gateway read a file."""
    env = {"PW": "s3cr${et-value", "B": "${file:/etc/shadow}", "E": "a$${b}", "DIR": "/run/c"}
    files = {"/run/c/pw": "${B} from a file\n"}
    for text, expected in {
        "${PW}": "s3cr${et-value",
        "${B}": "${file:/etc/shadow}",  # not read
        "${E}": "a$${b}",
        "x${PW}y": "xs3cr${et-valuey",
        "${file:${DIR}/pw}": "${B} from a file",
    }.items():
        assert resolve(text, lookup(env, files)).value == expected, text


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("${UNSET}", "${UNSET}: the environment variable UNSET is not set"),
        ("${not closed", "'${not closed', which is not a reference"),
        ("${1ABC}", "'${1ABC}', which is not a reference"),
        ("${A:-${B}}", "which is not a reference"),  # no nested defaults
        ("${file:missing}", "no file missing"),
    ],
)
def test_what_cannot_be_resolved_says_why(text: str, found: str) -> None:
    with pytest.raises(UnresolvedReference) as caught:
        resolve(text, lookup({"B": "b"}))
    assert found in str(caught.value)


def test_keys_are_never_resolved_and_values_without_references_are_untouched() -> None:
    env = {"X": "ex"}
    doc = parse_yaml("${X}: ${X}\nplain: a $ b {c}\nnum: 5\n", lookup(env))
    assert doc.data == {"${X}": "ex", "plain": "a $ b {c}", "num": 5}
    assert list(doc.marks.references) == [("${X}",)]


def test_a_config_takes_its_password_and_port_from_the_environment_and_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PB_TEST_PASSWORD", SECRET)
    monkeypatch.setenv("PB_TEST_PORT", "18830")
    config = endpoint_config(tmp_path, "${PB_TEST_PASSWORD}", "${PB_TEST_PORT}")
    assert broker_settings(config) == (18830, SECRET)  # text "18830" read as the int it is
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "mqtt").write_text("from-a-file\n")
    config = endpoint_config(tmp_path, '"${file:secrets/mqtt}"', "${PB_UNSET_PORT:-1884}")
    # relative to the config file, not to the working folder
    monkeypatch.chdir("/")
    assert broker_settings(config) == (1884, "from-a-file")


def test_unset_variables_and_bad_files_are_problems_at_their_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PB_TEST_UNSET", raising=False)
    config = endpoint_config(tmp_path, "${PB_TEST_UNSET}")
    [problem] = problems(config)
    assert problem.startswith(f"{config}:8:15: endpoints.broker.password: found ${{PB_TEST_UNSET}}")
    assert "PB_TEST_UNSET is not set" in problem and "${PB_TEST_UNSET:-VALUE}" in problem

    (tmp_path / "big").write_bytes(b"x" * (MAX_FILE_BYTES + 1))
    (tmp_path / "latin1").write_bytes(b"caf\xe9")
    for name, why in (("none", "no such file"), ("big", "bytes"), ("latin1", "not UTF-8")):
        [problem] = problems(endpoint_config(tmp_path, f"${{file:{name}}}"))
        assert f"${{file:{name}}}: " in problem and why in problem, problem
        assert ":8:15:" in problem


def test_a_secret_filled_in_is_never_shown_in_a_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a value that is no port: the message must say which reference, not what it holds
    monkeypatch.setenv("PB_TEST_PORT", SECRET)
    monkeypatch.setenv("PB_TEST_LONG", SECRET * 10)
    config = endpoint_config(tmp_path, "x", "${PB_TEST_PORT}", "    keepalive: ${PB_TEST_LONG}\n")
    found = problems(config)
    assert len(found) == 2, found
    text = "\n".join(found)
    assert SECRET not in text and SECRET[:20] not in text
    assert "'${PB_TEST_PORT}'" in text and "'${PB_TEST_LONG}'" in text
    assert "the value filled in is not shown" in text


def test_status_runs_in_a_shell_without_the_services_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PB_TEST_UNSET", raising=False)
    config = endpoint_config(
        tmp_path, "${PB_TEST_UNSET}", extra='    tls: {ca_file: "${file:/nonexistent/ca}"}\n'
    )
    assert main(["validate", str(config)]) == 1  # run would refuse it
    assert "PB_TEST_UNSET is not set" in capsys.readouterr().err
    assert main(["status", str(config)]) == 0  # only reads state files: no secret needed
    out = capsys.readouterr().out
    assert "broker" in out and "never run" in out
    kept = load_config(config, keep_unresolved=True).devices["broker"].config
    assert kept.password == "${PB_TEST_UNSET}"  # type: ignore[attr-defined]


def test_a_browse_names_the_reference_it_cannot_fill_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PB_TEST_UNSET", raising=False)
    config = endpoint_config(
        tmp_path,
        "${PB_TEST_UNSET}",
        extra="    subscriptions: [{topic: 'plant/#', points: keys}]\n",
    )
    out = tmp_path / "bridge.yaml"
    target = tmp_path / "t.csv"
    target.write_text("name\nsupply_temp\n")
    code = main(
        ["suggest", "--source", f"{config}#broker", "--browse", "--target", str(target),
         "--out", str(out)]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert "${PB_TEST_UNSET} cannot be filled in here" in err and ":8:15:" in err
    assert not out.exists()


# -- a real broker ---------------------------------------------------------------------------


def password_broker(tmp_path: Path, password: str) -> MosquittoBroker:
    passwd = tmp_path / "passwd"
    subprocess.run(
        [find_binary("mosquitto_passwd"), "-b", "-c", str(passwd), "gateway", password],
        check=True,
    )
    broker = MosquittoBroker(find_binary("mosquitto", "/usr/sbin/mosquitto"), tmp_path)
    broker.config.write_text(
        broker.config.read_text().replace("allow_anonymous true", "allow_anonymous false")
        + f"password_file {passwd}\nuser root\n"  # root: mosquitto keeps access to tmp files
    )
    return broker


def retained_status(broker: MosquittoBroker, password: str) -> str:
    done = subprocess.run(
        [find_binary("mosquitto_sub"), "-h", HOST, "-p", str(broker.port), "-u", "gateway",
         "-P", password, "-t", "refs/status", "-C", "1", "-W", "2"],
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    return done.stdout


def wait_until(check: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.1)


def test_the_gateway_logs_in_with_the_files_password_and_reads_it_again_on_sighup(
    tmp_path: Path,
) -> None:
    """The password file starts wrong (mosquitto refuses the login), is corrected, and a
    SIGHUP (systemctl reload) makes the gateway log in: the file is read on every load."""
    broker = password_broker(tmp_path, SECRET)
    broker.start()
    try:
        secret_file = tmp_path / "mqtt-password"
        secret_file.write_text("an-old-password\n")
        config = endpoint_config(
            tmp_path,
            '"${file:mqtt-password}"',
            "${PB_TEST_PORT}",
            '    status_topic: "refs/status"\n    reconnect: {initial: 0.1, max: 0.5}\n',
        )
        log_file = tmp_path / "gw.log"
        env = {**os.environ, "PB_TEST_PORT": str(broker.port)}
        with open(log_file, "w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", str(config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, text=True, env=env,
            )  # fmt: skip
        with reaped(proc):
            wait_until(lambda: "refused the connection" in log_file.read_text(), "a refused login")
            assert "online" not in retained_status(broker, SECRET)
            secret_file.write_text(SECRET + "\n")
            proc.send_signal(signal.SIGHUP)
            wait_until(lambda: "online" in retained_status(broker, SECRET), "online after SIGHUP")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        log_text = log_file.read_text()
        assert "reloading: the config loads" in log_text
        assert SECRET not in log_text and "an-old-password" not in log_text
    finally:
        broker.stop()


def test_the_schema_lets_an_editor_accept_references_where_numbers_and_patterns_go() -> None:
    from gateway.config.schema import REFERENCE, json_schema
    from gateway.plugins import load_registry

    entries = json_schema(load_registry())["$defs"]
    port = entries["mqtt.entry"]["properties"]["port"]  # int | None: the int side takes one
    assert REFERENCE in port["anyOf"][0]["anyOf"] and port["description"]
    secret = entries["coap.Oscore"]["properties"]["master_secret"]  # a hex pattern
    assert REFERENCE in secret["anyOf"] and secret["anyOf"][0]["pattern"]
    assert entries["mqtt.entry"]["properties"]["protocol"] == {
        "const": "mqtt",
        "description": "protocol plugin 'mqtt'",
    }  # what tells entries apart stays as it is
