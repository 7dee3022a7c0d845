"""Atomic writes: all or nothing, same-directory temporaries, ordinary permissions."""

import os

import pytest

from point_sup.utils.file_io import StagedFiles, atomic_open, atomic_write_bytes, atomic_write_text


def test_atomic_write_replaces_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_text(target, "first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert os.listdir(tmp_path) == ["out.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(target, "w") as f:
        f.write("partial new content")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.json"]
    with pytest.raises(ValueError), atomic_open(target, "a"):
        pass


def test_staged_files_all_or_nothing(tmp_path):
    with StagedFiles() as out:
        out.write(tmp_path / "a.json", b"A")
        out.write(tmp_path / "b.json", b"B")
        assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == []
    assert (tmp_path / "a.json").read_bytes() == b"A" and (tmp_path / "b.json").read_bytes() == b"B"
    with pytest.raises(KeyError), StagedFiles() as out:
        out.write(tmp_path / "c.json", b"C")
        raise KeyError("second version failed")
    assert sorted(os.listdir(tmp_path)) == ["a.json", "b.json"]
