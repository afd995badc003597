"""Packaging: a regular (non-editable) wheel ships registry.yaml; the example third-party plugin registers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import pytest

from tests.helpers.paths import REPO


def _pip(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    src = REPO
    res = _pip("wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(out), cwd=str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    wheels = list(out.glob("cdp-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def test_wheel_ships_registry(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "cdp/registry.yaml" in names
        assert "cdp/assets/demo.ckpt" in names  # `--model demo` works after a regular install
        assert "cdp/plugins/backbones/chargee3net/kernels/uvu_conv.c" in names  # the fused kernel's source
        assert "cdp/data/embedded/manifest.json" in names and "cdp/data/embedded/split.json" in names
        assert sum(n.startswith("cdp/data/embedded/") and n.endswith(".CHGCAR.gz") for n in names) >= 30
        assert sum(zf.getinfo(n).compress_size for n in names) < 40 * 2**20
        shipped = zf.read("cdp/registry.yaml").decode()
    assert shipped == (REPO / "registry.yaml").read_text()


@pytest.mark.slow  # ~30-50 s: runs in CI's slow step
def test_installed_wheel_finds_registry(wheel, tmp_path):
    target = tmp_path / "site"
    res = _pip("install", "--no-deps", "--target", str(target), str(wheel))
    assert res.returncode == 0, res.stderr[-2000:]
    code = "import cdp.core.registry as r, json; reg = r.get_registry(); print(json.dumps([str(reg.path), sorted(reg.presets)]))"
    env = dict(os.environ, PYTHONPATH=str(target))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    path, presets = json.loads(res.stdout)
    assert path.startswith(str(target))
    assert "chargee3net" in presets


@pytest.mark.slow  # ~30-50 s: runs in CI's slow step
def test_example_plugin_is_listed_and_usable(tmp_path):
    target = tmp_path / "site"
    res = _pip("install", "--no-deps", "--no-build-isolation", "--target", str(target), str(REPO / "examples" / "cdp-plugin-example"))
    assert res.returncode == 0, res.stderr[-2000:]
    env = dict(os.environ, PYTHONPATH=f"{target}{os.pathsep}{REPO}")
    res = subprocess.run([sys.executable, "-m", "cdp", "plugins", "list", "--json"], capture_output=True, text=True, env=env,
                         cwd=str(tmp_path), timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout)
    example = [p for p in report["plugins"] if p["name"] == "example"]
    assert example and example[0]["ok"] and "readout:example-scalar-mlp" in example[0]["components"]
    assert "cdp-plugin-example" in example[0]["origin"]
    code = (
        "import numpy as np, torch; from ase.build import bulk; from cdp.core.model import DensityModel;"
        "from cdp.core.registry import get_registry; from cdp.predict import Predictor;"
        "cfg = dict(get_registry().preset('equideepdft-cpu'), readout={'name': 'example-scalar-mlp', 'hidden': 8});"
        "m = DensityModel.from_config(cfg); print(type(m.readout).__module__);"
        "out = Predictor(m).predict(bulk('Si', 'diamond', a=5.43), np.zeros((3, 3))); assert out.shape == (3,) and np.isfinite(out).all()"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "cdp_plugin_example.plugin" in res.stdout
