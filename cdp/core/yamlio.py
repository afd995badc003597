"""Reading YAML mappings safely (``yaml.safe_load``) with one-line errors that name the file."""

from __future__ import annotations

from pathlib import Path

import yaml

from cdp.core.types import CdpError


def read_yaml_mapping(path, what: str, expected: str = "a mapping") -> dict:
    """The mapping stored in the YAML file ``path``; ``what`` names it in errors (e.g. "registry")."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise CdpError(f"{path}: cannot read {what} ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CdpError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise CdpError(f"{path}: expected {expected}")
    return data
