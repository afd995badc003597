"""Shipped pretrained models: every checkpoint has a model card whose hash is the file's, loadable by name."""

from __future__ import annotations

import hashlib
import json

import pytest

from cdp.shipped import format_card, shipped_checkpoints, shipped_models

CARD_KEYS = {"description", "architecture", "data", "split", "training_command", "training", "evaluation", "sha256"}


def test_every_shipped_checkpoint_has_a_matching_card():
    models = shipped_models()
    assert {m["name"] for m in models} >= {"demo"}
    for m in models:
        card = m["card"]
        assert card is not None, f"{m['name']}: no model card"
        assert CARD_KEYS <= set(card), f"{m['name']}: card lacks {sorted(CARD_KEYS - set(card))}"
        assert card["sha256"] == hashlib.sha256(open(m["path"], "rb").read()).hexdigest()
        assert m["card_ok"]
        for ev in card["evaluation"]:
            assert 0 < ev["eps_mae_mean"] < 100 and ev["eps_mae_se"] >= 0 and ev["structures"] >= 1


def test_a_card_for_another_file_is_reported(tmp_path, monkeypatch):
    import cdp.shipped as shipped

    (tmp_path / "m.ckpt").write_bytes(b"weights")
    (tmp_path / "m.json").write_text(json.dumps({"description": "x", "sha256": "0" * 64}))
    monkeypatch.setattr(shipped, "assets_dir", lambda: tmp_path)
    (entry,) = shipped.shipped_models()
    assert entry["card_ok"] is False
    assert "MISMATCH" in format_card(entry)


@pytest.mark.parametrize("name", sorted(shipped_checkpoints()))
def test_shipped_models_load_by_name(name):
    import numpy as np
    from ase.build import molecule

    import cdp

    predictor = cdp.load_model(name)
    water = molecule("H2O")
    water.pbc = False
    rho = predictor.predict(water, np.array([[0.0, 0.0, 0.3], [0.0, 0.0, 5.0]]))
    assert np.all(np.isfinite(rho))
    assert rho[0] > 0.5 and abs(rho[1]) < 0.05  # near the O nucleus vs 5 Å out in vacuum (e/Å³)
