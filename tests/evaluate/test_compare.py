"""cdp compare on a tiny budget: all report files, consistent numbers, refusal of an existing report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cdp.core.types import CdpError
from cdp.evaluate.compare import compare, parse_models
from tests.helpers.train import make_dataset


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    make_dataset(d, shape=(8, 8, 8))
    (d / "split.json").write_text(json.dumps({"train": ["ch4", "co"], "validation": ["nh3"], "test": ["h2o", "h2"]}))
    return str(d)


@pytest.fixture(scope="module")
def report_dir(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "report"
    compare(models="chargee3net,equideepdft,invdeepdft", data=tiny_data, steps=2, out=out, echo=lambda *a: None)
    return out


def test_report_files(report_dir):
    for f in ("report.md", "report.json", "learning_curves.png", "eps_mae_per_structure.png", "density_slice.png"):
        assert (report_dir / f).is_file(), f
    for name in ("chargee3net", "equideepdft", "invdeepdft"):
        assert (report_dir / "models" / f"{name}.ckpt").is_file()
        assert (report_dir / "logs" / f"{name}.jsonl").is_file()


def test_report_numbers_are_consistent(report_dir, tiny_data):
    from cdp.evaluate.evaluate import evaluate
    from cdp.predict import load_model

    report = json.loads((report_dir / "report.json").read_text())
    assert [m["name"] for m in report["models"]] == ["chargee3net", "equideepdft", "invdeepdft"]
    md = (report_dir / "report.md").read_text()
    for m in report["models"]:
        assert m["steps"] == 2
        assert m["preset"].endswith("-cpu")
        per = [s["eps_mae"] for s in m["evaluate"]["structures"]]
        assert [s["name"] for s in m["evaluate"]["structures"]] == ["h2o", "h2"]
        assert m["evaluate"]["eps_mae"]["mean"] == pytest.approx(np.mean(per))
        assert f"{m['evaluate']['eps_mae']['mean']:.3f}" in md
        assert m["parameters"] > 0 and m["peak_rss_mb"] > 0 and m["inference_probes_per_s"] > 0
    # the stored checkpoint is the evaluated model
    first = report["models"][1]
    again = evaluate(load_model(report_dir / "models" / "equideepdft.ckpt"), data=tiny_data, progress=False)
    assert again["eps_mae"]["mean"] == pytest.approx(first["evaluate"]["eps_mae"]["mean"], rel=1e-6)


def test_existing_report_is_refused_and_checkpoint_models_evaluate(report_dir, tiny_data):
    with pytest.raises(CdpError, match="already holds a report"):
        compare(models="equideepdft", data=tiny_data, steps=1, out=report_dir, echo=lambda *a: None)
    ckpt = report_dir / "models" / "equideepdft.ckpt"
    out = report_dir.parent / "again"
    compare(models=f"given={ckpt}", data=tiny_data, out=out, echo=lambda *a: None)
    report = json.loads((out / "report.json").read_text())
    first = json.loads((report_dir / "report.json").read_text())["models"][1]
    assert report["models"][0]["steps"] == 0
    assert report["models"][0]["evaluate"]["eps_mae"]["mean"] == pytest.approx(first["evaluate"]["eps_mae"]["mean"], rel=1e-6)


def test_element_outside_training_set_is_refused(report_dir, tmp_path):
    import shutil

    from tests.helpers.train import make_dataset

    data = make_dataset(tmp_path / "nitrogen", names=("nh3",), shape=(6, 6, 6))
    ckpt = report_dir / "models" / "equideepdft.ckpt"  # trained on H, C, O
    with pytest.raises(CdpError, match="every model failed.*element N"):
        compare(models=f"m={ckpt}", data=data, out=tmp_path / "o", echo=lambda *a: None)
    shutil.rmtree(tmp_path / "o", ignore_errors=True)


def test_parse_models_errors(tmp_path):
    assert [s.preset for s in parse_models("chargee3net,invdeepdft")] == ["chargee3net-cpu", "invdeepdft-cpu"]
    assert [s.preset for s in parse_models("chargee3net", size="paper")] == ["chargee3net"]
    with pytest.raises(CdpError, match="unknown model 'nope' "):  # the name typed, not 'nope-cpu'
        parse_models("nope")
    with pytest.raises(CdpError, match="no such checkpoint"):
        parse_models(f"x={tmp_path}/missing.ckpt")
    with pytest.raises(CdpError, match="named twice"):
        parse_models("equideepdft,equideepdft")


@pytest.mark.parametrize("kwargs,message", [
    ({"time_budget": float("nan")}, "--time-budget must be a positive number of seconds, got nan"),
    ({"time_budget": float("inf")}, "--time-budget must be a positive number of seconds, got inf"),
    ({"threads": 0}, "--threads must be at least 1"),
    ({"data": "/nonexistent-dataset"}, "/nonexistent-dataset: no such dataset"),
])
def test_arguments_refused_before_any_work(tmp_path, kwargs, message):
    out = tmp_path / "report"
    with pytest.raises(CdpError, match=message.replace("(", r"\(")):
        compare(**{"models": "equideepdft", "steps": 1, "out": out, "echo": lambda *a: None,
                   **({"steps": None} if "time_budget" in kwargs else {}), **kwargs})
    assert not out.exists()  # refused before the report directory was made


def _dying_worker(spec, *args):
    """A compare worker that dies without a word for the model named 'dies' (as a crash in native code)."""
    import os
    import signal

    if spec.name == "dies":
        os.kill(os.getpid(), signal.SIGKILL)
    from cdp.evaluate.compare import _worker

    _worker(spec, *args)


@pytest.mark.slow  # ~30-50 s: runs in CI's slow step
def test_dead_worker_is_reported_not_waited_for(report_dir, tiny_data, tmp_path, monkeypatch):
    import time

    import cdp.evaluate.compare as cmp

    monkeypatch.setattr(cmp, "_worker", _dying_worker)
    ckpt = report_dir / "models" / "equideepdft.ckpt"
    lines = []
    t0 = time.perf_counter()
    with pytest.raises(CdpError) as info:
        compare(models=f"ok={ckpt},dies={ckpt}", data=tiny_data, out=tmp_path / "o", echo=lines.append)
    assert time.perf_counter() - t0 < 120
    assert str(info.value) == ("1 of 2 models failed (dies: worker process died (killed by signal SIGKILL) without a "
                               f"result); the others are in {tmp_path / 'o'}")
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert [m["name"] for m in report["models"]] == ["ok"] and list(report["errors"]) == ["dies"]
    assert "[dies] failed: worker process died (killed by signal SIGKILL) without a result" in lines


def test_worker_exit_without_result_is_detected():
    import multiprocessing as mp
    import os

    from cdp.evaluate.compare import wait_result

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=os._exit, args=(3,))
    proc.start()
    assert wait_result(proc, results, "m", poll=0.1) == ("error", "m", "worker process died (exited with status 3) without a result")
    proc.join()
def test_report_names_the_prior_and_the_load(report_dir, tiny_data):
    from cdp.evaluate.evaluate import evaluate_prior
    from cdp.predict import load_model

    report = json.loads((report_dir / "report.json").read_text())
    md = (report_dir / "report.md").read_text()
    assert "Atomic prior: on for chargee3net (prior alone ε_mae" in md and "load average at the end" in md
    assert report["budget"] == {name: {"steps": 2} for name in ("chargee3net", "equideepdft", "invdeepdft")}
    for m in report["models"]:
        assert m["prior_fit"]["constraint_error"] < 1e-6 and len(m["load_average"]) == 3
        assert f"{m['prior']['eps_mae']['mean']:.3f}" in md
    # the prior's score is that of the checkpoint's prior alone on the test grids
    again = evaluate_prior(load_model(report_dir / "models" / "invdeepdft.ckpt"), data=tiny_data)
    assert again["eps_mae"]["mean"] == pytest.approx(report["models"][2]["prior"]["eps_mae"]["mean"], rel=1e-9)
    assert [s["name"] for s in again["structures"]] == ["h2o", "h2"]


def test_default_budget_is_calibrated_steps_per_preset():
    from cdp.evaluate.compare import DEFAULT_STEPS, DEFAULT_TIME_BUDGET, ModelSpec, model_budget

    specs = parse_models("chargee3net,equideepdft,invdeepdft")
    assert [model_budget(s, None, None) for s in specs] == [(DEFAULT_STEPS[s.preset], None) for s in specs]
    assert model_budget(specs[0], 7, None) == (7, None) and model_budget(specs[0], None, 30.0) == (None, 30.0)
    assert model_budget(ModelSpec("big", "chargee3net", None), None, None) == (None, DEFAULT_TIME_BUDGET)
