"""Atomic writes: all or nothing, normal permissions, no temp files left behind."""

from __future__ import annotations

import os

import pytest

from cdp.core.atomic import atomic_write, atomic_write_bytes, atomic_write_text


def test_write_replaces_and_uses_normal_permissions(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    mask = os.umask(0)
    os.umask(mask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~mask)


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "b.bin"
    atomic_write_bytes(path, b"old")

    def boom(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, boom)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin"]
