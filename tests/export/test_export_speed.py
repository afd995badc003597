"""What keeps `cdp export` quick: the two ONNX stages side by side in a forked process, a model built for
capture only (no native kernel compiled), one intra-op thread, and no import the command does not need."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cdp.cli.main import main
from cdp.core.checkpoint import save_checkpoint
from cdp.core.components import building_for_capture, for_capture
from cdp.core.types import CdpError
from cdp.export import fork
from cdp.export.context import intra_op_threads
from cdp.export.exporter import export_model
from cdp.export.runtime import load_exported
from cdp.predict import Predictor
from tests.helpers.export import cases, tiny_model

ROOT = Path(__file__).resolve().parents[2]
linux_only = pytest.mark.skipif(not fork.can_fork(), reason="the stages fork only on Linux")


def test_run_pair_one_job_runs_both_here():
    here = os.getpid()
    assert fork.run_pair(lambda: {"pid": os.getpid()}, lambda: os.getpid(), jobs=1) == ({"pid": here}, here)


@linux_only
def test_run_pair_runs_the_first_stage_in_a_child():
    here = os.getpid()
    child, mine = fork.run_pair(lambda: {"pid": os.getpid(), "x": [1.5, "a"]}, lambda: os.getpid(), jobs=2)
    assert mine == here and child["pid"] != here and child["x"] == [1.5, "a"]


@linux_only
def test_run_pair_child_errors_are_cdp_errors():
    def cdp_error():
        raise CdpError("cannot export encoder: the model's encoder is not exportable: boom")

    with pytest.raises(CdpError, match="^cannot export encoder: the model's encoder is not exportable: boom$"):
        fork.run_pair(cdp_error, lambda: 1, jobs=2)

    def other():
        raise ValueError("bad value")

    with pytest.raises(CdpError, match="^ValueError: bad value$"):
        fork.run_pair(other, lambda: 1, jobs=2)


@linux_only
def test_run_pair_stage_of_a_killed_child_runs_here():
    here = os.getpid()
    lines = []

    def first():
        if os.getpid() != here:
            os.kill(os.getpid(), signal.SIGKILL)
        return {"ran_in": os.getpid()}

    child, mine = fork.run_pair(first, lambda: "mine", jobs=2, log=lines.append)
    assert child == {"ran_in": here} and mine == "mine"
    assert lines == ["the second process ended without a result (signal 9); running its stage here"]


@linux_only
def test_run_pair_failure_here_stops_the_child(tmp_path):
    pid_file = tmp_path / "pid"

    def first():
        pid_file.write_text(str(os.getpid()))
        time.sleep(60)
        return {}

    def second():
        for _ in range(200):  # the child has started
            if pid_file.exists() and pid_file.read_text():
                break
            time.sleep(0.05)
        raise KeyboardInterrupt

    t = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        fork.run_pair(first, second, jobs=2)
    assert time.perf_counter() - t < 30
    with pytest.raises(ProcessLookupError):  # killed and reaped (a zombie would still take signal 0)
        os.kill(int(pid_file.read_text()), 0)


def test_default_jobs_follows_free_cpus(monkeypatch):
    monkeypatch.setattr(fork, "can_fork", lambda: True)
    monkeypatch.setattr(fork, "usable_cpus", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.4, 0.5, 0.6))
    assert fork.default_jobs() == 2
    monkeypatch.setattr(os, "getloadavg", lambda: (1.6, 0.5, 0.6))
    assert fork.default_jobs() == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(fork, "usable_cpus", lambda: 1)
    assert fork.default_jobs() == 1


def test_intra_op_threads_restores_the_count():
    before = torch.get_num_threads()
    with intra_op_threads(1) as prev:
        assert prev == before and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(CdpError, match="unknown export format 'xyz'"):
        export_model(tiny_model("invdeepdft"), Path("unused"), "xyz")
    assert torch.get_num_threads() == before


def test_for_capture_is_scoped():
    assert not building_for_capture()
    with for_capture():
        assert building_for_capture()
    assert not building_for_capture()


def test_cli_export_builds_for_capture_and_forks(tmp_path, monkeypatch):
    """`cdp export --jobs 2` of a ChargE3Net checkpoint: no native kernel is built or loaded, the encoder is
    exported in a second process (Linux), and the export gives PyTorch's densities (≤ 1e-5 of max |ρ|)."""
    from cdp.plugins.backbones.chargee3net import native

    model = tiny_model("chargee3net")
    ckpt = tmp_path / "m.ckpt"
    save_checkpoint(ckpt, model)
    monkeypatch.setattr(native, "load", lambda: pytest.fail("native.load() called while building for export"))
    out = tmp_path / "onnx"
    lines = []
    monkeypatch.setattr("click.echo", lambda msg="", err=False, **kw: lines.append(str(msg)))
    assert main(["export", str(ckpt), "--format", "onnx", "-o", str(out), "--jobs", "2"]) == 0
    monkeypatch.undo()
    second = [line for line in lines if line.strip().startswith("encoder: torch.export")]
    assert len(second) == 1 and second[0].endswith("(second process)") == fork.can_fork()
    exported = load_exported(out)
    for label, atoms, probes in cases():
        ref = Predictor(model, probe_batch=4).predict(atoms, probes)
        got = exported.predict(atoms, probes, probe_batch=4)
        assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max(), label


def test_export_command_imports_no_ase_io_or_scipy():
    """`cdp export` loads neither ase.io (only --structure reads a file) nor scipy (no graph is built)."""
    code = ("import sys, cdp.cli.export as ce; ce._load('demo'); "
            "print('ase.io' in sys.modules, 'scipy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False False"
