"""``${...}`` references in imported configs: resolved by OmegaConf, resolvers never run, errors one line."""

from __future__ import annotations

import pytest

from cdp.core.errors import CdpError
from cdp.importers.charge3net import parse_config


def _parse(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return parse_config(path)


def test_references_resolve_and_unread_resolvers_are_ignored(tmp_path):
    text = ("cutoff: 3.5\nlog_dir: ${hydra:run.dir}\njunk: '${'\nwhen: 2001-01-01\nsizes: {mul: 150}\n"
            "model:\n  model:\n    cutoff: ${cutoff}\n    mul: ${sizes.mul}\n    basis: g${.tail}\n    tail: auss\n")
    assert _parse(tmp_path, text) == {"mul": 150, "cutoff": 3.5, "basis": "gauss"}


@pytest.mark.parametrize("text, message", [
    ("model:\n  model:\n    cutoff: ${nowhere}\n", r"model\.model\.cutoff: cannot resolve a \$\{\.\.\.\} reference \(Interpolation key 'nowhere' not found\)"),
    ("a: ${b}\nb: ${a}\nmodel:\n  model:\n    cutoff: ${a}\n", r"model\.model\.cutoff: cannot resolve .*Recursive interpolation"),
    ("model:\n  model:\n    cutoff: ${oc.env:CDP_TEST_SECRET}\n", r"cannot resolve '\$\{oc\.env:CDP_TEST_SECRET\}' \(resolvers are not supported\)"),
    ("a: x${oc.env:CDP_TEST_SECRET}\nmodel:\n  model:\n    basis: ${a}\n", r"model\.model\.basis: .*resolvers are not supported"),
    ("k: cutoff\nmodel:\n  model:\n    cutoff: ${${oc.env:CDP_TEST_SECRET}}\n", r"resolvers are not supported"),
    ("model:\n  model:\n    cutoff: '${'\n", r"cannot resolve '\$\{' \(not a valid \$\{\.\.\.\} reference\)"),
])
def test_bad_references_are_refused_in_one_line_without_running_resolvers(tmp_path, monkeypatch, text, message):
    monkeypatch.setenv("CDP_TEST_SECRET", "hunter2")
    with pytest.raises(CdpError, match=message) as err:
        _parse(tmp_path, text)
    assert "hunter2" not in str(err.value) and "\n" not in str(err.value)


def test_yaml_bombs_are_still_refused_before_resolution(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 9)]
    with pytest.raises(CdpError, match="refused: more than 100000 nodes"):
        _parse(tmp_path, "\n".join(lines) + "\nmodel:\n  model:\n    cutoff: 3\n")
