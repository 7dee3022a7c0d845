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


def test_staged_write_with_a_filler_writing_by_descriptor_and_by_name(tmp_path):
    def fill(tmp, fd):
        assert tmp.parent == tmp_path and tmp.name.startswith(".x.json.")
        os.pwrite(fd, b"head", 0)
        with open(tmp, "r+b") as f:  # as another process would: by name, at its own offset
            f.seek(4)
            f.write(b"+body")

    with StagedFiles() as out:
        out.write_with(tmp_path / "x.json", fill)
        out.write(tmp_path / "y.json", b"Y")
        with pytest.raises(ValueError, match="staged twice"):
            out.write_with(tmp_path / "x.json", fill)
    assert (tmp_path / "x.json").read_bytes() == b"head+body"
    with pytest.raises(OSError), StagedFiles() as out:
        out.write_with(tmp_path / "z.json", lambda tmp, fd: os.pwrite(fd, b"partial", 0) and os.fstat(-1))
    assert sorted(os.listdir(tmp_path)) == ["x.json", "y.json"]  # no z.json, no temporary
