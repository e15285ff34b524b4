"""``${NAME}``, ``${NAME:-default}`` and ``${file:PATH}`` in config values: secrets out of the file.

A broker password or an OSCORE master secret written into the YAML ends up in backups and in
version control. A value may instead name an environment variable (a systemd unit's
``Environment=``/``EnvironmentFile=``, a container's ``-e``) or a file whose contents are the value
(systemd's ``LoadCredential=``, a Docker or Kubernetes secret):

* ``${NAME}``: the variable ``NAME`` (letters, digits, ``_``; not starting with a digit); unset
  is a config problem.
* ``${NAME:-default}``: ``default`` where ``NAME`` is unset or empty (as in the shell).
* ``${file:PATH}``: the file's text, one trailing newline removed; ``PATH`` is relative to the
  config file's folder and may itself hold ``${NAME}`` (``${file:${CREDENTIALS_DIRECTORY}/mqtt}``).
* ``$${`` is a literal ``${``; any other ``$`` is itself.

Values only, never keys, and the result is always text: a key that takes a number or a bool
reads ``"1883"`` or ``"true"`` as one (the config models coerce such text), so ``port: ${PORT}``
works. The file is read again on every load, a reload (SIGHUP) included; the environment is the
process's own, fixed when it started.

`resolve` fills in one scalar's text from a `Lookup` and does no I/O itself;
`process_lookup` is the lookup of the running process (its environment, the file system).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

MAX_FILE_BYTES = 64 * 1024  # a secret, a token or a certificate's text; not a data file

# ${NAME}, ${NAME:-default}, ${file:PATH}; a default stops at the first "}" or "$", a PATH at
# the first "}" but for its own ${NAME} references.
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_VAR = r"\$\{(?P<name>" + _NAME + r")(?::-(?P<default>[^$}]*))?\}"
_VARIABLE = re.compile(_VAR)
_REFERENCE = re.compile(
    r"(?<!\$)(?:\$\{file:(?P<path>(?:[^${}]|\$\{" + _NAME + r"(?::-[^$}]*)?\})+)\}|" + _VAR + ")"
)
_ESCAPED = "$${"
_HOLD = "\x00"  # stands in for an escaped "${" while the text is checked


class UnresolvedReference(Exception):
    """A reference that cannot be resolved: the message says which and why (what was found),
    ``expected`` what would do."""

    def __init__(self, found: str, expected: str) -> None:
        super().__init__(found)
        self.expected = expected


@dataclass(frozen=True)
class Lookup:
    """Where references are resolved from: ``env(name)`` is the variable or None; ``read(path)``
    is a file's text (raising `UnresolvedReference` with the reason)."""

    env: Callable[[str], str | None]
    read: Callable[[str], str]
    # Offline commands (gateway status, shadow, outbox) read the config for its file paths in a
    # shell that may lack the service's variables and credentials: keep such a reference as
    # written instead of failing.
    keep_unresolved: bool = False


@dataclass
class Resolved:
    value: str
    references: list[str] = field(default_factory=list)  # as written: "${MQTT_PASSWORD}"
    kept: list[str] = field(default_factory=list)  # those kept unresolved (`keep_unresolved`)


def has_reference(text: str) -> bool:
    return "${" in text


def resolve(text: str, lookup: Lookup) -> Resolved:
    """``text`` with its references filled in; `UnresolvedReference` for one that cannot be.

    One pass over the text as written: what a variable or a file holds is copied in as it is,
    never read as config text again (a password may hold ``${``, and a variable cannot name a
    file to read)."""
    references: list[str] = []
    kept: list[str] = []
    parts: list[str] = []
    last = 0
    for match in _REFERENCE.finditer(text):
        parts.append(_literal(text[last : match.start()]))
        last = match.end()
        written = match.group(0)
        references.append(written)
        try:
            if match.group("path") is not None:  # ${file:PATH}, PATH's own ${NAME} filled in
                path = _VARIABLE.sub(lambda m: _variable(m, lookup), match.group("path"))
                parts.append(_one_line_end_off(lookup.read(path)))
            else:
                parts.append(_variable(match, lookup))
        except UnresolvedReference:
            if not lookup.keep_unresolved:
                raise
            kept.append(written)
            parts.append(written)
    parts.append(_literal(text[last:]))
    return Resolved("".join(parts), references, kept)


def _variable(match: re.Match[str], lookup: Lookup) -> str:
    name, default = match.group("name"), match.group("default")
    value = lookup.env(name)
    if value is None or (value == "" and default is not None):
        if default is not None:
            return default
        raise UnresolvedReference(
            f"${{{name}}}: the environment variable {name} is not set",
            f"{name} set in the gateway's environment, or a default: ${{{name}:-VALUE}}",
        )
    return value


def _literal(text: str) -> str:
    """Text between references, as written: ``$${`` is a literal ``${``; any other ``${`` is
    a malformed reference."""
    held = text.replace(_ESCAPED, _HOLD)
    start = held.find("${")
    if start >= 0:
        shown = held[start : start + 40].replace(_HOLD, "$${")
        raise UnresolvedReference(
            f"{shown!r}, which is not a reference",
            "${NAME}, ${NAME:-default} or ${file:PATH}; $${ for a literal ${",
        )
    return held.replace(_HOLD, "${")


def _one_line_end_off(text: str) -> str:
    if text.endswith("\r\n"):
        return text[:-2]
    return text.removesuffix("\n")


def hide_values(text: str, references: Iterable[tuple[str, str]], max_shown: int) -> str:
    """``text`` (a problem or a warning) with each resolved value shown as it was written
    (``references``: (as written, resolved) pairs), so that a secret never reaches a message or
    a log. Values are matched as messages quote them (``repr``, cut to ``max_shown``
    characters); ones under 3 characters are left (they would match unrelated text, and hide
    nothing)."""
    for as_written, resolved in references:
        if len(resolved) < 3 or resolved == as_written:
            continue
        quoted = repr(resolved)
        text = text.replace(quoted, repr(as_written))
        if len(quoted) > max_shown:
            text = text.replace(quoted[: max_shown - 3] + "...", repr(as_written))
    return text


def process_lookup(base_dir: str, *, keep_unresolved: bool = False) -> Lookup:
    """This process's environment, and files relative to ``base_dir`` (the config's folder)."""

    def read(path: str) -> str:
        full = os.path.join(base_dir, os.path.expanduser(path))
        written = f"${{file:{path}}}"
        expected = (
            f"a readable file of UTF-8 text, at most {MAX_FILE_BYTES // 1024} KiB (a relative "
            "path is relative to the config file)"
        )
        try:
            info = os.stat(full)
            if not stat.S_ISREG(info.st_mode):
                raise UnresolvedReference(f"{written}: {full} is not a regular file", expected)
            if info.st_size > MAX_FILE_BYTES:
                raise UnresolvedReference(f"{written}: {full} has {info.st_size} bytes", expected)
            with open(full, "rb") as f:
                raw = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            raise UnresolvedReference(f"{written}: no such file {full}", expected) from None
        except PermissionError:
            raise UnresolvedReference(
                f"{written}: {full} may not be read by this user", expected
            ) from None
        except OSError as exc:
            raise UnresolvedReference(
                f"{written}: {full} cannot be read ({exc.strerror or exc})", expected
            ) from None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UnresolvedReference(f"{written}: {full} is not UTF-8 text", expected) from None

    return Lookup(os.environ.get, read, keep_unresolved)
