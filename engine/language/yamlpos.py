"""YAML to plain Python data, plus where every value and key came from.

Why not `yaml.safe_load`: a validation error is only useful to a marketer if it points at the
line and column they typed, so the loader needs a position for every path in the document, and
`safe_load` throws positions away. We compose the node graph (libyaml when available) and build
the data ourselves, recording `(line, col)` (1-based) of each value node and of each mapping key.

Scalar typing follows YAML 1.1 (PyYAML's defaults: `yes/no/on/off` are booleans, `2026-05-01` is
a date, `~` is null) with two deliberate exceptions:

* no sexagesimal numbers: YAML 1.1 reads an unquoted `10:30` as the integer 630, which turns a
  clock time into nonsense; here `10:30` stays the string "10:30";
* mapping keys are always strings (the scalar as written): rules keys are names, and YAML 1.1
  would otherwise turn a key `on:` into `True` or `1:` into an int.

Also rejected, at the offending key: a key given twice in one mapping (YAML says keys are unique;
PyYAML silently keeps the last one, hiding a typo'd copy-paste).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from engine.errors import Problem

Key = str | int
YamlPath = tuple[Key, ...]
Pos = tuple[int, int]

_INT = re.compile(
    r"""^(?:[-+]?0b[0-1_]+
    |[-+]?0[0-7_]+
    |[-+]?(?:0|[1-9][0-9_]*)
    |[-+]?0x[0-9a-fA-F_]+)$""",
    re.X,
)
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
    |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _resolvers_without_sexagesimals() -> dict[Any, list[tuple[str, re.Pattern[str]]]]:
    """PyYAML's implicit resolvers, order kept, with the int/float patterns swapped."""
    table: dict[Any, list[tuple[str, re.Pattern[str]]]] = {}
    for first, entries in yaml.SafeLoader.yaml_implicit_resolvers.items():
        table[first] = [
            (tag, _INT if tag == _INT_TAG else _FLOAT if tag == _FLOAT_TAG else pattern)
            for tag, pattern in entries
        ]
    return table


_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _FastLoader(_BaseLoader):  # type: ignore[misc]
    """libyaml parser (when built in) with Herald's scalar resolution."""

    yaml_implicit_resolvers = _resolvers_without_sexagesimals()


class _PyLoader(yaml.SafeLoader):
    """Pure-Python parser: used to describe syntax errors, whose wording and marks are clearer."""

    yaml_implicit_resolvers = _resolvers_without_sexagesimals()


@dataclass
class YamlDocument:
    """One parsed file: `data` (None if the file is empty or unreadable) and its position map.

    `values[path]` is where the value at `path` starts; `keys[path]` is where the mapping key that
    leads to `path` starts. Paths are tuples of mapping keys (str) and sequence indexes (int).
    """

    path: str
    data: Any = None
    values: dict[YamlPath, Pos] = field(default_factory=dict)
    keys: dict[YamlPath, Pos] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def value_pos(self, path: YamlPath) -> Pos:
        """Position of the value at `path`, or of its nearest ancestor that exists."""
        for prefix in _prefixes(path):
            if prefix in self.values:
                return self.values[prefix]
        return (1, 1)

    def key_pos(self, path: YamlPath) -> Pos:
        """Position of the key naming `path` (falls back to the value, then to ancestors)."""
        if path in self.keys:
            return self.keys[path]
        return self.value_pos(path)

    def problem(self, pos: Pos, message: str) -> Problem:
        """A problem of this file at `pos`."""
        return Problem(self.path, pos[0], pos[1], message)


def _prefixes(path: YamlPath) -> Iterator[YamlPath]:
    for end in range(len(path), -1, -1):
        yield path[:end]


def _pos(node: Node) -> Pos:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


class _Builder:
    """Turns a composed node graph into data, filling the document's position maps."""

    def __init__(self, doc: YamlDocument, loader: Any) -> None:
        self.doc = doc
        self.loader = loader
        self.active: set[int] = set()

    def build(self, node: Node, path: YamlPath) -> Any:
        self.doc.values.setdefault(path, _pos(node))
        if isinstance(node, ScalarNode):
            return self._scalar(node)
        if id(node) in self.active:
            self.doc.problems.append(self.doc.problem(_pos(node), "recursive YAML alias"))
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            if isinstance(node, MappingNode):
                return self._mapping(node, path)
            return None
        finally:
            self.active.discard(id(node))

    def _scalar(self, node: ScalarNode) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            detail = getattr(exc, "problem", None) or str(exc)
            self.doc.problems.append(self.doc.problem(_pos(node), f"invalid YAML value: {detail}"))
            return node.value

    def _key(self, node: Node) -> str | None:
        if isinstance(node, ScalarNode):
            return str(node.value)
        self.doc.problems.append(
            self.doc.problem(_pos(node), "a mapping key must be a name, not a list or mapping")
        )
        return None

    def _mapping(self, node: MappingNode, path: YamlPath) -> dict[str, Any]:
        result: dict[str, Any] = {}
        merges: list[Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merges.append(value_node)
                continue
            key = self._key(key_node)
            if key is None:
                continue
            if key in result:
                first = self.doc.keys[(*path, key)]
                self.doc.problems.append(
                    self.doc.problem(
                        _pos(key_node),
                        f"duplicate key '{key}' (first given at line {first[0]})",
                    )
                )
                continue
            self.doc.keys.setdefault((*path, key), _pos(key_node))
            result[key] = self.build(value_node, (*path, key))
        for merge in merges:
            self._merge(merge, path, result)
        return result

    def _merge(self, node: Node, path: YamlPath, into: dict[str, Any]) -> None:
        """`<<: *defaults` (or a list of them): keys not given explicitly are taken over."""
        sources = node.value if isinstance(node, SequenceNode) else [node]
        for source in sources:
            if not isinstance(source, MappingNode):
                self.doc.problems.append(
                    self.doc.problem(_pos(source), "'<<' needs a mapping (or a list of them)")
                )
                continue
            merged = self._mapping(source, path)
            for key, value in merged.items():
                into.setdefault(key, value)


def parse_yaml(text: str, path: str) -> YamlDocument:
    """Parse one YAML document; problems (syntax, duplicate keys) are collected, never raised."""
    doc = YamlDocument(path)
    loader = _FastLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.YAMLError:
        doc.problems.append(_syntax_problem(text, path))
        return doc
    finally:
        loader.dispose()
    if root is None:
        return doc
    doc.data = _Builder(doc, loader).build(root, ())
    return doc


def _syntax_problem(text: str, path: str) -> Problem:
    """Describe a syntax error with the pure-Python parser (libyaml's messages are terser)."""
    loader = _PyLoader(text)
    try:
        loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context or "unreadable"
        if exc.context and what.startswith("but "):
            what = f"{exc.context}, {what}"
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return Problem(path, line, col, f"invalid YAML: {what}")
    except yaml.YAMLError as exc:
        return Problem(path, 1, 1, f"invalid YAML: {exc}")
    finally:
        loader.dispose()
    return Problem(path, 1, 1, "invalid YAML")
