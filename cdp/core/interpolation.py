"""``${a.b}`` references in configs written for other programs (Hydra / OmegaConf run configs), resolved by
OmegaConf — references only: no resolver ever runs.

The document is a plain value already read safely (:func:`cdp.core.yamlio.safe_yaml_load`, with its alias and
node limits, or JSON), so nothing is constructed from tags.  Before OmegaConf sees it, every string that
calls a resolver (``${oc.env:HOME}``, ``${hydra:run.dir}``, ``${a.${oc.env:X}}``) or is not a valid
interpolation is replaced by an inert token: the keys cdp never reads may hold anything, and reading a key
whose value is (or refers to) such a string is a one-line CdpError naming it.  Missing and circular
references are one-line CdpErrors too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Dict, List

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import GrammarParseError, OmegaConfBaseException
from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser
from omegaconf.grammar_parser import parse

from cdp.core.errors import CdpError

_TOKEN = re.compile("\x00cdp(\\d+)\x00")


def _calls_resolver(text: str) -> bool:
    """Whether the interpolation string ``text`` calls a resolver anywhere (nested references included)."""
    stack = [parse(text)]
    while stack:
        node = stack.pop()
        if isinstance(node, OmegaConfGrammarParser.InterpolationResolverContext):
            return True
        stack.extend(getattr(node, "children", None) or [])
    return False


class References:
    """A document whose ``${...}`` references resolve on access: ``References(doc, where).get(["model", "cutoff"])``."""

    def __init__(self, doc: Any, where: str):
        self.where = where
        self._shielded: List[tuple] = []  # token index → (why, original string)
        try:
            self.cfg = OmegaConf.create(self._shield(doc))
        except OmegaConfBaseException as exc:
            raise CdpError(f"{where}: cannot read the config ({_first_line(exc)})") from None

    def _shield(self, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {(k if isinstance(k, (str, int, float, bool)) else str(k)): self._shield(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._shield(v) for v in value]
        if value is not None and not isinstance(value, (str, int, float, bool)):
            return str(value)  # YAML timestamps, binary: text, as OmegaConf holds plain values only
        if isinstance(value, str) and "${" in value:
            try:
                why = "resolvers are not supported" if _calls_resolver(value) else None
            except GrammarParseError:
                why = "not a valid ${...} reference"
            if why is not None:
                self._shielded.append((why, value))
                return f"\x00cdp{len(self._shielded) - 1}\x00"
        return value

    def get(self, path: List[str], name: str) -> Any:
        """The value at ``path`` (keys from the top), references resolved; ``name`` labels it in errors."""
        node: Any = self.cfg
        try:
            for key in path:
                node = node[key]
            if isinstance(node, (DictConfig, ListConfig)):
                node = OmegaConf.to_container(node, resolve=True)
        except OmegaConfBaseException as exc:
            raise CdpError(f"{self.where}: {name}: cannot resolve a ${{...}} reference ({_first_line(exc)})") from None
        self._refuse_shielded(node, name)
        return node

    def _refuse_shielded(self, value: Any, name: str) -> None:
        if isinstance(value, dict):
            for v in value.values():
                self._refuse_shielded(v, name)
        elif isinstance(value, list):
            for v in value:
                self._refuse_shielded(v, name)
        elif isinstance(value, str):
            m = _TOKEN.search(value)
            if m:
                why, original = self._shielded[int(m.group(1))]
                raise CdpError(f"{self.where}: {name}: cannot resolve '{original}' ({why})")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def resolve_section(doc: Any, section: List[str], keys, where: str) -> Dict[str, Any]:
    """``{key: value}`` for each of ``keys`` present (and not null) in the mapping at ``section`` of ``doc``,
    its ``${...}`` references resolved against the whole document."""
    refs = References(doc, where)
    out: Dict[str, Any] = {}
    for key in keys:
        value = refs.get(section + [key], ".".join(section + [key])) if _has(doc, section, key) else None
        if value is not None:
            out[key] = value
    return out


def _has(doc: Any, section: List[str], key: str) -> bool:
    node = doc
    for part in section:
        node = node[part]
    return key in node and node[key] is not None
