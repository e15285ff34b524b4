"""Password hashes for server users (`gateway.passwords`)."""

import re

import pytest

from gateway.passwords import hash_password, verify_password
from protocols.opcua.config import User


def test_round_trip_and_format() -> None:
    stored = hash_password("correct horse")
    assert re.fullmatch(r"scrypt\$16384\$8\$1\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+", stored)
    assert verify_password("correct horse", stored)
    # what the config accepts as a users: entry
    assert User(username="op", password_hash=stored).password_hash == stored


def test_wrong_password_rejected() -> None:
    stored = hash_password("correct horse")
    assert not verify_password("correct horsE", stored)
    assert not verify_password("", stored)


def test_salt_differs_per_hash() -> None:
    a, b = hash_password("same"), hash_password("same")
    assert a != b
    assert a.split("$")[4] != b.split("$")[4]
    assert verify_password("same", a) and verify_password("same", b)


def test_malformed_or_tampered_hashes_are_false_not_errors() -> None:
    stored = hash_password("pw")
    n, r, p, salt, digest = stored.split("$")[1:]
    assert not verify_password("pw", "pw")  # a plain password pasted into the config
    assert not verify_password("pw", f"bcrypt${n}${r}${p}${salt}${digest}")
    assert not verify_password("pw", f"scrypt${n}${r}${p}$!!notbase64${digest}")
    assert not verify_password("pw", f"scrypt$1000${r}${p}${salt}${digest}")  # n not a power of 2
    assert not verify_password("pw", f"scrypt${2**30}${r}${p}${salt}${digest}")  # absurd cost
    other_salt = hash_password("pw").split("$")[4]
    assert not verify_password("pw", f"scrypt${n}${r}${p}${other_salt}${digest}")


def test_a_damaged_hash_in_the_config_is_a_config_error() -> None:
    from gateway.config import ConfigError, load_config_text

    good = hash_password("pw")
    _, n, r, p, salt, digest = good.split("$")
    template = (
        "endpoints:\n"
        "  ua:\n"
        "    protocol: opcua\n"
        "    role: server\n"
        "    users: [{{username: op, password_hash: '{h}'}}]\n"
    )
    load_config_text(template.format(h=good), "ok.yaml")
    for damaged, why in [
        (f"scrypt$abc${r}${p}${salt}${digest}", "N, r and p must be integers"),
        (f"scrypt${n}${r}${p}$!!${digest}", "must be base64"),
        (f"scrypt${n}${r}${p}${salt}", "not scrypt$N$r$p$salt$hash"),
        (f"scrypt$1000${r}${p}${salt}${digest}", "cost parameters out of range"),
    ]:
        with pytest.raises(ConfigError, match="password_hash") as err:
            load_config_text(template.format(h=damaged), "bad.yaml")
        assert why in str(err.value), str(err.value)
