"""Reading YAML safely (``yaml.SafeLoader``, alias limits) with one-line errors that name the file.

``yaml.safe_load`` executes nothing, but aliases let a few hundred bytes expand into billions of nodes
("billion laughs"), which any later walk over the value (validation, an error message) pays for.  The
loader here counts aliases while composing and the nodes of the fully expanded document before
constructing anything, and refuses more than :data:`MAX_ALIASES` aliases, :data:`MAX_NODES` expanded
nodes, or a recursive alias, in time linear in the file size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cdp.core.types import CdpError

MAX_ALIASES = 100
MAX_NODES = 100_000


class _LimitedLoader(yaml.SafeLoader):
    """SafeLoader that counts alias events while composing (the expanded size is checked afterwards)."""

    def __init__(self, stream):
        super().__init__(stream)
        self.alias_count = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.alias_count += 1
            if self.alias_count > MAX_ALIASES:
                raise _Refused(f"more than {MAX_ALIASES} YAML aliases")
        return super().compose_node(parent, index)


class _Refused(Exception):
    pass


def _expanded_size(root: yaml.Node) -> int:
    """Nodes of the document with every alias expanded, counted on the node DAG without expanding it."""
    sizes: dict = {}
    active: set = set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            active.discard(key)
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            else:
                children = []
            total = 1
            for child in children:
                total += sizes[id(child)]
                if total > MAX_NODES:
                    raise _Refused(f"more than {MAX_NODES} nodes once its aliases are expanded")
            sizes[key] = total
            continue
        if key in sizes:
            continue
        if key in active:
            raise _Refused("a recursive YAML alias")
        active.add(key)
        stack.append((node, True))
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        for child in reversed(children):
            if id(child) in active:
                raise _Refused("a recursive YAML alias")
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def safe_yaml_load(text: str, where: str) -> Any:
    """The value of the YAML document ``text``; CdpError (naming ``where``) on invalid or bomb-like YAML."""
    loader = _LimitedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node)
        return loader.construct_document(node)
    except _Refused as exc:
        raise CdpError(f"{where}: refused: {exc}") from None
    except yaml.YAMLError as exc:
        raise CdpError(f"{where}: invalid YAML ({str(exc).splitlines()[0][:200]})") from None
    except RecursionError:
        raise CdpError(f"{where}: refused: YAML nested too deeply") from None
    finally:
        loader.dispose()


def read_yaml_mapping(path, what: str, expected: str = "a mapping") -> dict:
    """The mapping stored in the YAML file ``path``; ``what`` names it in errors (e.g. "registry")."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise CdpError(f"{path}: cannot read {what} ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise CdpError(f"{path}: cannot read {what} (not UTF-8 text)") from None
    data = safe_yaml_load(text, str(path))
    if not isinstance(data, dict):
        raise CdpError(f"{path}: expected {expected}")
    return data
