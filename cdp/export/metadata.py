"""``cdp_export.json``: what an export directory holds, and the checks a runtime makes before using it.

The JSON names the artifact format, cutoff, elements, dtype, the encoder/decoder files with their
input/output names, shapes, dtypes and SHA-256, the cdp/torch versions and the source checkpoint's hash.
The cutoff, elements and format version are also embedded in each artifact file (ONNX metadata_props,
TorchScript extra files), so that a JSON that does not belong to its files is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

from cdp.core.atomic import atomic_write_text  # noqa: F401  (re-exported)
from cdp.core.checkpoint import file_sha256
from cdp.core.constants import MAX_Z
from cdp.core.types import CdpError

FORMAT = "cdp-export"
FORMAT_VERSION = 1
METADATA_FILE = "cdp_export.json"
ARTIFACTS = {"onnx": "onnx", "torchscript": "pt", "pt2": "pt2"}
EMBEDDED_KEYS = ("format_version", "cutoff", "elements", "role")


def embedded(meta: dict, role: str) -> Dict[str, str]:
    """The string key/values stored inside the ``role`` ('encoder'/'decoder') artifact file."""
    return {
        "cdp.format_version": str(meta["format_version"]),
        "cdp.cutoff": repr(float(meta["cutoff"])),
        "cdp.elements": ",".join(str(z) for z in meta["elements"]),
        "cdp.role": role,
    }


def check_embedded(meta: dict, role: str, found: Dict[str, str], where: str) -> None:
    """Refuse an artifact file whose embedded metadata disagrees with ``cdp_export.json``."""
    expected = embedded(meta, role)
    for key, value in expected.items():
        got = found.get(key)
        if got is None:
            raise CdpError(f"{where}: no embedded '{key}' (not written by `cdp export`, or from another format version)")
        if key == "cdp.cutoff":
            same = abs(float(got) - float(value)) <= 1e-12 * max(1.0, abs(float(value)))
        else:
            same = got == value
        if not same:
            what = key.split(".", 1)[1]
            raise CdpError(f"{where}: {what} {got!r} in the file does not match {METADATA_FILE} ({value!r})")


def write_metadata(out_dir, meta: dict) -> Path:
    path = Path(out_dir) / METADATA_FILE
    atomic_write_text(path, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def read_metadata(model_dir, expect_format: Optional[str] = None, check_files: bool = True) -> dict:
    """Load and check ``DIR/cdp_export.json`` (format, version, cutoff, elements, dtype, spin, files, hashes).

    Loading a TorchScript or pt2 artifact runs code by nature, so each file must be a plain name inside
    ``model_dir`` whose SHA-256 matches the one recorded here; any other value is a one-line CdpError.
    """
    model_dir = Path(model_dir)
    path = model_dir / METADATA_FILE
    if not model_dir.is_dir():
        raise CdpError(f"{model_dir}: not an export directory (run `cdp export` first)")
    if not path.is_file():
        raise CdpError(f"{model_dir}: no {METADATA_FILE} (not written by `cdp export`)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CdpError(f"{path}: unreadable ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CdpError(f"{path}: not a cdp export description (format must be '{FORMAT}')")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CdpError(f"{path}: export format version {_short(version)} is not supported (this cdp reads version {FORMAT_VERSION}); re-export the model")
    artifact = meta.get("artifact")
    if not isinstance(artifact, str) or artifact not in ARTIFACTS:
        raise CdpError(f"{path}: unknown artifact {_short(artifact)} (one of {', '.join(ARTIFACTS)})")
    if expect_format is not None and artifact != expect_format:
        raise CdpError(f"{path}: holds a {artifact} export, not {expect_format}")
    cutoff = meta.get("cutoff")
    if isinstance(cutoff, bool) or not isinstance(cutoff, (int, float)) or not 0 < cutoff < 1e3:
        raise CdpError(f"{path}: cutoff must be a positive number of Å, got {_short(cutoff)}")
    elements = meta.get("elements")
    if not isinstance(elements, list) or not elements or not all(
        isinstance(z, int) and not isinstance(z, bool) and 0 < z <= MAX_Z for z in elements
    ):
        raise CdpError(f"{path}: elements must be a non-empty list of atomic numbers 1..118, got {_short(elements)}")
    if meta.get("dtype") not in ("float32", "float64"):
        raise CdpError(f"{path}: dtype must be float32 or float64, got {_short(meta.get('dtype'))}")
    if not isinstance(meta.get("spin", False), bool):
        raise CdpError(f"{path}: spin must be true or false, got {_short(meta.get('spin'))}")
    memory = meta.get("probe_memory")
    if memory is not None and not (isinstance(memory, dict) and set(memory) == {"fixed", "per_probe", "per_edge"} and all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**62 for v in memory.values())):
        raise CdpError(f"{path}: probe_memory must be null or {{fixed, per_probe, per_edge}} byte counts, got {_short(memory)}")
    for role in ("encoder", "decoder"):
        part = meta.get(role)
        if not isinstance(part, dict) or not isinstance(part.get("file"), str):
            raise CdpError(f"{path}: '{role}' must name its file")
        name = part["file"]
        if name in ("", ".", "..") or "/" in name or "\\" in name or Path(name).name != name:
            raise CdpError(f"{path}: {role} file {_short(name)} is not a file name inside the export directory")
        if not name.endswith("." + ARTIFACTS[artifact]):
            raise CdpError(f"{path}: {role} file {name} is not a {artifact} artifact (expected .{ARTIFACTS[artifact]})")
        digest = part.get("sha256")
        if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise CdpError(f"{path}: {role} has no valid sha256 (an export is loaded only when its files' hashes match)")
        if check_files:
            f = model_dir / name
            if not f.is_file():
                raise CdpError(f"{path}: {role} file {name} is missing")
            if file_sha256(f) != digest:
                raise CdpError(f"{f}: SHA-256 does not match {METADATA_FILE} (file replaced or corrupted)")
    return meta


def _short(value) -> str:
    """``repr`` of a value from an untrusted file, cut to one short line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def io_entry(name: str, dtype: str, shape: List) -> dict:
    """One input/output description: name, dtype, shape with symbolic dimensions as strings."""
    return {"name": name, "dtype": dtype, "shape": list(shape)}
