"""The `cdp` command: help, version, plugins list, stubs and one-line errors with non-zero exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

from cdp import __version__
from cdp.cli.main import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "cdp", *args], capture_output=True, text=True, timeout=120)


def test_help_and_version(capsys):
    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("plugins", "inspect", "import", "predict", "train", "evaluate", "compare", "export", "data"):
        assert cmd in out


def test_plugins_list_json(capsys):
    assert main(["plugins", "list", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert main(["plugins", "list", "--strict"]) == 0  # no broken plugin here
    assert "periodic" in report["components"]["graph"]
    assert "chargee3net" in report["presets"]
    assert all({"name", "origin", "ok"} <= set(p) for p in report["plugins"])


def test_unknown_command_is_usage_error():
    res = run_cli("frobnicate")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr


def test_console_error_is_one_line(tmp_path):
    res = run_cli("inspect", str(tmp_path / "missing.CHGCAR"))  # the console path: python -m cdp
    assert res.returncode == 2
    assert res.stderr == f"error: {tmp_path / 'missing.CHGCAR'}: no such file\n" and res.stdout == ""


def test_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.xyz"
    bad.write_text("2\nnot an xyz file\nH 0 0\n")
    assert main(["predict", str(tmp_path / "missing.xyz"), "--model", "demo", "-o", str(tmp_path / "o.npy")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'missing.xyz'}: no such structure file\n"
    assert main(["predict", str(bad), "--model", "demo", "-o", str(tmp_path / "o.npy")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}") and err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.xyz"]
