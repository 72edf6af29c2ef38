"""YAML from outside (spec files, ``--set`` values), bounded before anything else touches it.

``yaml.safe_load`` runs no code but trusts the document's shape: a 1.5 KB alias bomb expands to
billions of nodes as soon as something walks it (a message, a copy, pydantic), a self-referencing
alias or a few hundred nested brackets end in ``RecursionError``, and a duplicated key silently
replaces the first (a typo'd second ``trial:`` block hides the first). ``BoundedLoader`` is the
``SafeLoader`` with those refused while composing: depth, alias uses, the size the document
expands to, and duplicate keys. Every refusal is a one-line ``ConfigError``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from jepa_sweeps.config import ConfigError
from jepa_sweeps.redaction import shorten

MAX_BYTES = 1 << 20  # a spec is a few hundred bytes; 1 MiB leaves room for long point lists
MAX_DEPTH = 32  # the deepest real spec (search → key → choice → distribution → bounds) is ~6
MAX_ALIASES = 200
MAX_NODES = 100_000  # nodes after expanding aliases


class BoundedLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses deep, alias-expanding, self-referencing or duplicate-key documents."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0
        self.aliases = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise self._refuse(f"more than {MAX_ALIASES} alias uses (*name)")
            return super().compose_node(parent, index)
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise self._refuse(f"nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        expanded_size(node)
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        if isinstance(node, yaml.MappingNode):
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # unhashable: SafeLoader names it below
                    continue
                if first is not key_node:
                    line = first.start_mark.line + 1
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {shorten(repr(key))} (first at line {line})", key_node.start_mark
                    )
        return super().construct_mapping(node, deep)

    def _refuse(self, problem: str) -> yaml.YAMLError:
        return yaml.composer.ComposerError(None, None, problem, self.peek_event().start_mark)


def expanded_size(root: yaml.Node) -> int:
    """Nodes of the document with every alias expanded, up to ``MAX_NODES``; refuses cycles.

    Iterative, and memoised per node: a shared node is counted as often as it is used, but
    walked once, so a bomb is measured in the time its source takes to read."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = _children(node)
        if done:
            on_path.discard(key)
            sizes[key] = min(MAX_NODES + 1, 1 + sum(sizes[id(c)] for c in children))
            if sizes[key] > MAX_NODES:
                raise yaml.composer.ComposerError(
                    None, None, f"expands to more than {MAX_NODES} values (aliases)", node.start_mark
                )
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise yaml.composer.ComposerError(None, None, "an alias refers to itself", node.start_mark)
        on_path.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in on_path:
                raise yaml.composer.ComposerError(None, None, "an alias refers to itself", child.start_mark)
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def non_finite(data: Any) -> tuple[str, float] | None:
    """The dotted key and value of an infinity or NaN anywhere in parsed ``data`` (YAML's ``.inf``,
    ``.nan``, ``1e400``), or None: no setting takes one, and each failed only after a sweep started."""
    stack = [("", data)]
    while stack:
        key, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return key, value
        if isinstance(value, dict):
            stack += [(f"{key}.{k}" if key else str(k), v) for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            stack += [(f"{key}[{i}]", v) for i, v in enumerate(value)]
    return None


def loads(text: str, source: str) -> Any:
    """Parse one YAML document; a ``ConfigError`` of one line naming ``source`` (and line, column)."""
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{source}: {len(text)} characters, more than a spec may hold ({MAX_BYTES})")
    loader = None
    try:
        loader = BoundedLoader(text)
        return loader.get_single_data()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        syntax = isinstance(err, (yaml.scanner.ScannerError, yaml.parser.ParserError, yaml.reader.ReaderError))
        raise ConfigError(f"{source}:{where} YAML {'syntax error' if syntax else 'refused'}: {shorten(problem, 160)}") from None
    except RecursionError:  # a construct deeper than the composer saw (should not happen)
        raise ConfigError(f"{source}: YAML nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_file(path: str | Path) -> Any:
    """Read and parse a spec file, reading at most ``MAX_BYTES`` + 1 bytes."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"spec file {shorten(str(path))!r}: not found")
    try:
        with file.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"spec file {shorten(str(path))!r}: cannot read ({err.strerror})") from None
    if len(data) > MAX_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_BYTES} bytes; a spec is a few hundred")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    return loads(text, str(path))
