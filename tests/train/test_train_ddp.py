"""DDP: 2 CPU processes under torchrun (gloo, loopback) equal the single-process run with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml

from cdp.core.checkpoint import read_checkpoint
from cdp.train import train

from tests.helpers.train import make_dataset, tiny_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(run):
    return [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.slow
def test_two_ranks_match_single_process(tmp_path):
    data = make_dataset(tmp_path / "data")
    # global batch 4: one process × 4 structures vs two ranks × 2 structures
    single = train(tiny_config(data, batch_size=4, steps=4, validate_every=2), run_dir=tmp_path / "single")
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(data, batch_size=2, steps=4, validate_every=2)))
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
           "-m", "cdp.cli.main", "train", str(cfg), "--run-dir", str(run), "--device", "cpu", "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch"] == 4 and summary["steps"] == 4
    assert summary["ddp_weight_spread"] == 0.0  # every rank holds rank 0's weights exactly
    assert _losses(run) == pytest.approx(_losses(single), rel=1e-12, abs=1e-14)
    a, b = read_checkpoint(single / "last.ckpt")["state_dict"], read_checkpoint(run / "last.ckpt")["state_dict"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-10, atol=1e-12)
    assert json.loads((single / "summary.json").read_text())["probes_seen"] == summary["probes_seen"]
