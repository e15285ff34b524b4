"""YAML text -> plain Python data, plus the line and column of every key and value.

``yaml.safe_load`` forgets where things were written, and a config error without a line number
sends the user hunting. So the file is composed into PyYAML nodes (which carry marks) and
converted here by hand:

* scalars go through SafeLoader's own constructors, so ``1`` is an int, ``1.5`` a float, ``yes``
  a bool and ``~`` None exactly as with ``yaml.safe_load``;
* mapping keys are always strings (they are names in this config): a key written ``1`` or ``on``
  is the name ``'1'`` or ``'on'``, not an int or a bool;
* a key written twice in one mapping is reported (``yaml.safe_load`` silently keeps the last;
  so do we, after reporting it);
* merge keys (``<<: *base``) work as in YAML 1.1: keys written in the mapping win over merged
  ones, and earlier merged mappings win over later ones. A merged value keeps the position where
  it was written (under the anchor);
* aliases are expanded; an alias inside its own anchor, and an expansion beyond ``MAX_NODES``
  values (the "billion laughs" file), are reported instead of hanging.

Positions are 1-based. ``Marks.values`` holds the position of every value by its path
(``("devices", "plc1", "points", 2, "type")``), ``Marks.keys`` that of the key naming a mapping
value, so that "unknown key" can point at the key itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from gateway.config.references import Lookup, UnresolvedReference, has_reference, resolve

Key = str | int
Path = tuple[Key, ...]

MAX_NODES = 200_000
MAX_FLOW_DEPTH = 1_000  # libyaml recurses in C: 30,000 nested [ crash the process (SIGSEGV)
MERGE_TAG = "tag:yaml.org,2002:merge"
PLAIN_COLLECTION_TAGS = ("tag:yaml.org,2002:seq", "tag:yaml.org,2002:map")


@dataclass(frozen=True, order=True)
class Mark:
    line: int
    column: int

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column}"


START = Mark(1, 1)


def _mark_of(node: Node) -> Mark:
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


@dataclass
class Marks:
    """Where each value (and each mapping key) of a document was written."""

    values: dict[Path, Mark] = field(default_factory=dict)
    keys: dict[Path, Mark] = field(default_factory=dict)
    # path -> (the value as written, as resolved) where it held ${...} (`references`)
    references: dict[Path, tuple[str, str]] = field(default_factory=dict)
    # path -> the references this process could not resolve, kept as written (keep_unresolved)
    unresolved: dict[Path, list[str]] = field(default_factory=dict)

    def value(self, path: Path) -> Mark:
        """Position of the value at ``path``, or of its nearest written ancestor."""
        for end in range(len(path), -1, -1):
            mark = self.values.get(path[:end])
            if mark is not None:
                return mark
        return START

    def key(self, path: Path) -> Mark:
        """Position of the key naming ``path``; the value's position when it has no key."""
        mark = self.keys.get(path)
        return mark if mark is not None else self.value(path)


@dataclass(frozen=True)
class YamlIssue:
    """A problem found while reading the YAML itself (before any schema)."""

    path: Path
    mark: Mark
    found: str
    expected: str


@dataclass
class Document:
    data: Any
    marks: Marks
    issues: list[YamlIssue]


class _TooLarge(Exception):
    pass


class _Converter:
    def __init__(self, loader: yaml.SafeLoader, lookup: Lookup | None) -> None:
        self.loader = loader
        self.lookup = lookup
        self.marks = Marks()
        self.issues: list[YamlIssue] = []
        self.count = 0
        self.active: set[int] = set()  # nodes being converted (an alias inside its anchor)

    def issue(self, path: Path, mark: Mark, found: str, expected: str) -> None:
        self.issues.append(YamlIssue(path, mark, found, expected))

    def convert(self, node: Node, path: Path) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise _TooLarge
        self.marks.values[path] = _mark_of(node)
        if isinstance(node, ScalarNode):
            value = self.scalar(node, path)
            if self.lookup is not None and isinstance(value, str) and has_reference(value):
                return self.resolve(value, node, path, self.lookup)
            return value
        if id(node) in self.active:
            self.issue(
                path,
                _mark_of(node),
                "an alias used inside its own anchor",
                "a value that does not contain itself",
            )
            return None
        if node.tag not in PLAIN_COLLECTION_TAGS:
            self.issue(
                path,
                _mark_of(node),
                f"the tag {node.tag!r}",
                "a plain YAML list or mapping (no tags)",
            )
        self.active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                return [self.convert(item, (*path, i)) for i, item in enumerate(node.value)]
            if isinstance(node, MappingNode):
                return self.mapping(node, path)
        finally:
            self.active.discard(id(node))
        raise TypeError(f"unexpected YAML node {node!r}")  # pragma: no cover - PyYAML has 3

    def scalar(self, node: ScalarNode, path: Path) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            self.issue(
                path,
                _mark_of(node),
                f"{node.value!r} ({problem})",
                "a plain YAML value (no custom tags)",
            )
            return None

    def resolve(self, value: str, node: ScalarNode, path: Path, lookup: Lookup) -> str | None:
        try:
            resolved = resolve(value, lookup)
        except UnresolvedReference as exc:
            self.issue(path, _mark_of(node), str(exc), exc.expected)
            return None
        self.marks.references[path] = (value, resolved.value)
        if resolved.kept:
            self.marks.unresolved[path] = resolved.kept
        return resolved.value

    def key_of(self, node: Node, path: Path) -> str | None:
        if not isinstance(node, ScalarNode):
            kind = "a list" if isinstance(node, SequenceNode) else "a mapping"
            self.issue(path, _mark_of(node), f"{kind} used as a key", "a plain name as the key")
            return None
        value = self.scalar(node, path)
        if isinstance(value, str):
            return value
        return str(node.value)  # 1, on, ~ written as keys are names here

    def mapping(self, node: MappingNode, path: Path) -> dict[str, Any]:
        # Merged mappings first, so that the keys written here overwrite their positions too.
        merged: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:
                for source in self.merge_sources(value_node, path):
                    values = self.convert(source, path)
                    if isinstance(values, dict):
                        merged = {**values, **merged}  # an earlier source wins
        self.marks.values[path] = _mark_of(node)
        own: dict[str, Any] = {}
        own_marks: dict[str, Mark] = {}
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:
                continue
            key = self.key_of(key_node, path)
            if key is None:
                continue
            key_mark = _mark_of(key_node)
            if key in own_marks:
                self.issue(
                    (*path, key),
                    key_mark,
                    f"key {key!r} appears twice (first at line {own_marks[key].line})",
                    "each key once in a mapping",
                )
            else:
                own_marks[key] = key_mark
            # A repeated key keeps the last value (as yaml.safe_load does) and its position.
            self.marks.keys[(*path, key)] = key_mark
            own[key] = self.convert(value_node, (*path, key))
        return {**merged, **own}

    def merge_sources(self, node: Node, path: Path) -> list[MappingNode]:
        """The mappings a ``<<`` merges, in priority order (earlier wins)."""
        if isinstance(node, MappingNode):
            return [node]
        if isinstance(node, SequenceNode) and all(
            isinstance(item, MappingNode) for item in node.value
        ):
            return [item for item in node.value if isinstance(item, MappingNode)]
        self.issue(
            path,
            _mark_of(node),
            "a merge key ('<<') with something else than a mapping",
            "'<<: *anchor' naming a mapping, or a list of them",
        )
        return []


# libyaml's parser is ~10x faster (500 devices x 30 points: 0.4 s instead of 4 s) and builds the
# same nodes with the same marks; the pure-Python one is the fallback where it is missing.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_yaml(text: str, lookup: Lookup | None = None) -> Document:
    """Compose ``text`` and convert it; every problem comes back in ``Document.issues``.
    With ``lookup``, ``${...}`` references in values are resolved (`references`)."""
    doc = _parse(text, _Loader, lookup)
    if doc.data is None and doc.issues and _Loader is not yaml.SafeLoader:
        # A broken file: parse again in Python, whose messages are the clearer ones.
        return _parse(text, yaml.SafeLoader, lookup)
    return doc


def flow_depth(text: str, limit: int = MAX_FLOW_DEPTH) -> int:
    """How deep ``[`` and ``{`` nest outside quotes and comments, counted up to ``limit + 1``."""
    if text.count("[") + text.count("{") <= limit:  # the usual config: no scan needed
        return 0
    depth = deepest = 0
    quote = ""
    comment = False
    previous = "\n"
    for ch in text:
        if comment:
            comment = ch != "\n"
        elif quote:
            if ch == quote and previous != "\\":
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and previous in " \t\n":
            comment = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        elif ch in "]}":
            depth = max(depth - 1, 0)
        previous = ch
    return deepest


def _parse(text: str, loader_class: type[yaml.SafeLoader], lookup: Lookup | None) -> Document:
    if flow_depth(text) > MAX_FLOW_DEPTH:
        return Document(None, Marks(), [_too_deep()])
    try:
        loader = loader_class(text)
    except yaml.YAMLError as exc:
        return Document(None, Marks(), [_yaml_issue(exc, text)])
    try:
        try:
            root = loader.get_single_node()
        except yaml.YAMLError as exc:
            return Document(None, Marks(), [_yaml_issue(exc, text)])
        except RecursionError:
            return Document(None, Marks(), [_too_deep()])
        converter = _Converter(loader, lookup)
        if root is None:
            return Document(None, converter.marks, [])
        try:
            data = converter.convert(root, ())
        except _TooLarge:
            return Document(
                None,
                Marks(),
                [
                    YamlIssue(
                        (),
                        START,
                        f"more than {MAX_NODES} values once aliases are expanded",
                        "a config that does not multiply aliases",
                    )
                ],
            )
        except RecursionError:
            return Document(None, Marks(), [_too_deep()])
        return Document(data, converter.marks, converter.issues)
    finally:
        loader.dispose()


def _yaml_issue(exc: yaml.YAMLError, text: str) -> YamlIssue:
    if isinstance(exc, yaml.MarkedYAMLError):
        return _syntax_issue(exc)
    if isinstance(exc, yaml.reader.ReaderError):
        char = exc.character
        shown = f"{char!r}" if isinstance(char, str) else f"#x{char:04x}"
        return YamlIssue(
            (),
            _position_mark(text, exc.position),
            f"the character {shown} ({exc.reason})",
            "printable text",
        )
    return YamlIssue((), START, f"invalid YAML: {exc}", "well-formed YAML")


def _too_deep() -> YamlIssue:
    return YamlIssue((), START, "values nested too deeply", "a config nested a few levels deep")


def _position_mark(text: str, position: int) -> Mark:
    before = text[:position]
    return Mark(before.count("\n") + 1, position - (before.rfind("\n") + 1) + 1)


def _syntax_issue(exc: yaml.MarkedYAMLError) -> YamlIssue:
    mark = exc.problem_mark or exc.context_mark
    where = Mark(mark.line + 1, mark.column + 1) if mark is not None else START
    problem = exc.problem or "a syntax error"
    context = exc.context or ""
    if problem.startswith("but found ") and context.startswith("expected "):
        # ComposerError and friends: "expected a single document ..., but found another ..."
        return YamlIssue(
            (),
            where,
            f"invalid YAML: {problem.removeprefix('but found ')}",
            context.removeprefix("expected "),
        )
    found = f"invalid YAML: {problem}"
    if context:
        found += f" ({context}"
        if (
            exc.context_mark is not None
            and exc.problem_mark is not None
            and (exc.context_mark.line != exc.problem_mark.line)
        ):
            found += f" started at line {exc.context_mark.line + 1}"
        found += ")"
    return YamlIssue((), where, found, "well-formed YAML (check indentation, quotes and brackets)")
