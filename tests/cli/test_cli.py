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
    assert "periodic" in report["components"]["graph"]
    assert "chargee3net" in report["presets"]
    assert all({"name", "origin", "ok"} <= set(p) for p in report["plugins"])


def test_unknown_command_is_usage_error():
    res = run_cli("frobnicate")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr


def test_console_error_is_one_line(tmp_path):
    res = run_cli("plugins", "list")
    assert res.returncode == 0, res.stderr
    assert "registry:" in res.stdout
