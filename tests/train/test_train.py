"""Training: config checks, schedule, sampling shards, run directory, exact resume, Ctrl-C, bad data, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cdp.core.checkpoint import load_checkpoint, read_checkpoint
from cdp.core.types import CdpError
from cdp.train import train, train_run
from cdp.train.config import resolve_config
from cdp.train.sampling import epoch_order, shard, step_slots
from cdp.train.schedule import PowerDecay

from tests.helpers.train import make_dataset, tiny_config


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    return make_dataset(tmp_path_factory.mktemp("data"))


def losses(run: Path):
    return [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]


def state(run: Path, name: str = "last.ckpt") -> dict:
    return read_checkpoint(run / name)["state_dict"]


# -- config ----------------------------------------------------------------------------------------
def test_config_precedence_and_errors(tmp_path):
    cfg = resolve_config({"model": "equideepdft-cpu", "steps": 10})
    assert cfg["loss"] == "mse" and cfg["lr"] == 1e-3  # the model preset's own training defaults
    cfg = resolve_config({"model": "equideepdft-cpu", "preset": "qm9", "steps": 10})
    assert cfg["loss"] == "l1" and cfg["lr"] == 1e-2 and cfg["beta"] == 1e4 and cfg["pbc"] is False
    cfg = resolve_config({"model": "equideepdft-cpu", "preset": "qm9", "loss": "mse", "steps": 10})
    assert cfg["loss"] == "mse"
    assert resolve_config(cfg) == cfg  # a resolved config resolves to itself (config.yaml round trip)
    bad = [
        ({"model": "equideepdft-cpu", "steps": 1, "lr": -1}, "'lr'"),
        ({"model": "equideepdft-cpu", "steps": 1, "loss": "huber"}, "'loss'"),
        ({"model": "equideepdft-cpu", "steps": 1, "bogus": 1}, "'bogus'"),
        ({"model": "equideepdft-cpu"}, "'steps'"),
        ({"model": "no-such-model", "steps": 1}, "no-such-model"),
        ({"model": {"preset": "equideepdft-cpu", "backbon": {}}, "steps": 1}, "model.backbon"),
        ({"model": "equideepdft-cpu", "steps": 1, "preset": "qm10"}, "qm10"),
        ({"model": "equideepdft-cpu", "steps": 1.5}, "'steps'"),
    ]
    for c, needle in bad:
        with pytest.raises(CdpError, match=needle.replace(".", r"\.")):
            resolve_config(c)
    path = tmp_path / "c.yaml"
    path.write_text("model: equideepdft-cpu\nsteps: [1\n")
    with pytest.raises(CdpError, match="c.yaml"):
        resolve_config(path)


def test_schedule_is_power_decay():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=0.01)
    sched = PowerDecay(opt, beta=7.0)
    for step in range(20):
        assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.96 ** (step / 7.0), rel=1e-14)
        opt.step()
        sched.step()


def test_shards_partition_the_global_batch():
    n, seed, b = 5, 3, 4
    for step in range(6):
        slots = step_slots(n, seed, step, b)
        assert shard(slots, 0, 2) + shard(slots, 1, 2) == slots
    # consecutive steps walk through epochs: each epoch visits every structure exactly once
    stream = [s for step in range(10) for s in step_slots(n, seed, step, b)]
    for epoch in range(8):
        visited = sorted(i for i, e in stream if e == epoch)
        assert visited == list(range(n))
        assert [i for i, e in stream if e == epoch] == list(epoch_order(n, seed, epoch))


# -- runs ------------------------------------------------------------------------------------------
def test_run_directory_and_checkpoints(dataset, tmp_path):
    run = tmp_path / "run"
    result = train_run(tiny_config(dataset), run_dir=run)
    for name in ("config.yaml", "log.jsonl", "best.ckpt", "last.ckpt", "summary.json"):
        assert (run / name).is_file(), name
    assert result.steps == 6 and result.stopped_by == "steps" and result.probes_seen == 6 * 2 * 16
    assert result.train_seconds > 0 and result.probes_per_second > 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["last_checkpoint"] == str(run / "last.ckpt") and summary["best_checkpoint"] == str(run / "best.ckpt")
    log = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 7))
    assert all(r["lr"] == pytest.approx(1e-3 * 0.96 ** ((r["step"] - 1) / 3e3)) for r in steps)  # preset lr/β
    vals = [r for r in log if "val_nmape" in r]
    assert [r["step"] for r in vals] == [3, 6]
    assert summary["best_metric"] == min(r["val_nmape"] for r in vals)
    # checkpoints load with weights_only and rebuild the model; train_state is plain data
    model, data = load_checkpoint(run / "last.ckpt")
    assert model.dtype == torch.float64 and data["metadata"]["seed"] == 42
    ts = data["train_state"]
    assert ts["step"] == 6 and set(ts["rng"]) >= {"torch", "numpy", "python"}
    torch.load(run / "last.ckpt", weights_only=True)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["split"]["train"] == ["h2", "h2o", "ch4", "nh3"] and saved["seed"] == 42
    with pytest.raises(CdpError, match="already holds a training run"):
        train(tiny_config(dataset), run_dir=run)


def test_resume_continues_exactly(dataset, tmp_path):
    full = train(tiny_config(dataset), run_dir=tmp_path / "full")
    half = train(tiny_config(dataset, steps=3), run_dir=tmp_path / "half")
    assert len(losses(half)) == 3
    train(tiny_config(dataset, steps=6), resume=half)
    assert losses(half) == losses(full)  # bitwise, float64
    a, b = state(full), state(half)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_checkpoint(half / "last.ckpt")["train_state"]["step"] == 6
    with pytest.raises(CdpError, match="'probes' differs"):
        train(tiny_config(dataset, steps=8, probes=4), resume=half)


def test_interrupt_keeps_checkpoint_and_resumes(dataset, tmp_path, monkeypatch, capsys):
    from cdp.train.trainer import Trainer

    full = train(tiny_config(dataset), run_dir=tmp_path / "full")
    run = tmp_path / "run"
    original = Trainer._train_step

    def interrupt_at_5(self):
        if self.step == 4:  # steps 1..4 done, checkpoint after step 3: the 4th line of the log is orphaned
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "_train_step", interrupt_at_5)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(dataset), run_dir=run)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"resume with: cdp train --resume {run}" in err[0] and "holds step 3" in err[0]
    assert read_checkpoint(run / "last.ckpt")["train_state"]["step"] == 3
    monkeypatch.setattr(Trainer, "_train_step", original)
    train(None, resume=run)
    assert losses(run) == losses(full)


def test_time_budget_stops_and_records(dataset, tmp_path):
    cfg = tiny_config(dataset, steps=None, time_budget=1.0, validate_every=1000)
    result = train_run(cfg, run_dir=tmp_path / "run")
    assert result.stopped_by == "time_budget" and result.steps >= 1
    assert 1.0 <= result.elapsed_seconds < 10.0
    assert read_checkpoint(result.last_checkpoint)["train_state"]["step"] == result.steps
    assert Path(result.best_checkpoint).is_file()


@pytest.mark.parametrize("budget", [0.25, 0.45, 0.65, 0.85])
def test_time_budget_elapsed_is_the_time_compared(dataset, tmp_path, monkeypatch, budget):
    # a clock that ticks 0.1 s per reading: wherever between two steps the budget is crossed, the recorded
    # elapsed must be the reading that stopped training, never an earlier one below the budget
    import types

    import cdp.train.trainer as trainer_mod

    ticks = iter(range(10**6))
    fake = types.SimpleNamespace(perf_counter=lambda: 0.1 * next(ticks), strftime=trainer_mod.time.strftime)
    monkeypatch.setattr(trainer_mod, "time", fake)
    cfg = tiny_config(dataset, steps=None, time_budget=budget, validate_every=1000)
    result = train_run(cfg, run_dir=tmp_path / "run")
    assert result.stopped_by == "time_budget"
    assert result.elapsed_seconds >= budget
    assert read_checkpoint(result.last_checkpoint)["train_state"]["elapsed"] == result.elapsed_seconds


def test_training_reduces_loss(dataset, tmp_path):
    # one structure, train = validation: 25 Adam steps at lr 1e-2 must lower the validation error
    cfg = tiny_config(dataset, split={"train": ["h2o"], "validation": ["h2o"]}, steps=25, lr=1e-2,
                      batch_size=1, probes=64, validate_every=25, val_probes=64, log_every=5)
    run = train(cfg, run_dir=tmp_path / "run")
    log = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
    train_lines = [r for r in log if "loss" in r]
    assert train_lines[-1]["loss"] < train_lines[0]["loss"]
    # the same fixed validation probes, before and after training
    before = train_run(dict(cfg, steps=1, validate_every=1), run_dir=tmp_path / "one").best_metric
    after = json.loads((run / "summary.json").read_text())["best_metric"]
    assert after < before


# -- bad input -------------------------------------------------------------------------------------
def test_corrupt_file_is_skipped_and_named(dataset, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    (data / "bad.CHGCAR").write_text("this is not a CHGCAR\n1.0\n")
    cfg = tiny_config(str(data), split={"train": ["h2", "bad", "h2o"], "validation": ["co"]}, steps=2)
    result = train_run(cfg, run_dir=tmp_path / "run")
    assert len(result.skipped) == 1 and result.skipped[0].startswith("bad:")
    assert "bad" in capsys.readouterr().err
    only_bad = tiny_config(str(data), split={"train": ["bad"], "validation": []}, steps=2)
    with pytest.raises(CdpError, match="no readable training structures"):
        train(only_bad, run_dir=tmp_path / "run2")


def test_element_beyond_118_is_refused(dataset, tmp_path, monkeypatch):
    import cdp.data
    from cdp.data.datasets import load_dataset

    real = load_dataset(dataset)
    original_load = type(real).load

    def load(self, i):
        sample = original_load(self, i)
        if sample.name == "h2":
            sample.atoms.numbers[0] = 119
        return sample

    monkeypatch.setattr(type(real), "load", load)
    monkeypatch.setattr(cdp.data, "load_dataset", lambda path=None: load_dataset(path))
    with pytest.raises(CdpError, match="h2: element with atomic number 119"):
        train(tiny_config(dataset), run_dir=tmp_path / "run")


def test_split_errors(dataset, tmp_path):
    with pytest.raises(CdpError, match="no item named 'xe'"):
        train(tiny_config(dataset, split={"train": ["xe"]}), run_dir=tmp_path / "a")
    with pytest.raises(CdpError, match="'split.train'"):
        resolve_config(tiny_config(dataset, split={"train": "h2"}))


# -- CLI -------------------------------------------------------------------------------------------
def test_cli_train_and_resume(dataset, tmp_path, capsys):
    from cdp.cli.main import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(dataset, steps=3)))
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--run", str(run), "--device", "cpu", "--no-progress"]) == 0
    assert len(losses(run)) == 3
    assert main(["train", "--resume", str(run), "--steps", "5", "--no-progress"]) == 0
    assert len(losses(run)) == 5
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0  # already at its 5 steps
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"{run}: the run already holds step 5 and stops there (steps); nothing trained "
                   f"(raise --steps or --time-budget to train further)"]
    assert len(losses(run)) == 5
    assert main(["train", str(tmp_path / "missing.yaml"), "--run", str(tmp_path / "x")]) == 2


def test_progress_bar_only_when_asked(dataset, tmp_path, capsys):
    train(tiny_config(dataset, steps=2, progress=None), run_dir=tmp_path / "quiet")
    assert capsys.readouterr().err == ""  # not a terminal: no bar
    train(tiny_config(dataset, steps=2, progress=True), run_dir=tmp_path / "bar")
    err = capsys.readouterr().err
    assert "2/2" in err and "loss=" in err and "probes_s=" in err


def test_embedded_dataset_is_the_default(tmp_path):
    from cdp.data import load_dataset

    names = set(load_dataset(None).names)
    cfg = tiny_config(None, split=None, steps=1, val_structures=1, probes=8, val_probes=8, batch_size=1)
    run = train(cfg, run_dir=tmp_path / "run")
    split = yaml.safe_load((run / "config.yaml").read_text())["split"]
    parts = [set(split[k]) for k in ("train", "validation", "test")]
    assert set().union(*parts) == names and sum(map(len, parts)) == len(names)
    assert all(parts)


@pytest.mark.slow
def test_sigint_exits_130_with_one_resume_line(dataset, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    cfg = tmp_path / "long.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(dataset, steps=10**6, validate_every=5, log_every=5)))
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "cdp.cli.main", "train", str(cfg), "--run", str(run)],
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and '"step": 10,' not in ((run / "log.jsonl").read_text() if (run / "log.jsonl").exists() else ""):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 130
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"resume with: cdp train --resume {run}" in lines[0]
    step = read_checkpoint(run / "last.ckpt")["train_state"]["step"]
    # the signal may land between step 10's log line and its checkpoint: the checkpoint then holds step 5
    assert step >= 5 and step % 5 == 0
    assert f"holds step {step};" in lines[0]  # the message tells the truth about the checkpoint on disk


def test_checkpoint_records_training_elements(tmp_path):
    import torch

    from cdp.train import train_run
    from tests.helpers.train import make_dataset, tiny_config

    data = make_dataset(tmp_path / "data")
    result = train_run(tiny_config(data, steps=1), run_dir=tmp_path / "run")
    meta = torch.load(result.last_checkpoint, weights_only=True)["metadata"]
    assert meta["elements"] == [1, 6, 7, 8]  # h2, h2o, ch4, nh3 in the train split
