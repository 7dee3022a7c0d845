"""Atomic writes: all or nothing, same-directory temporaries, ordinary permissions."""

import os

import pytest

from point_sup_labels.file_io import StagedFiles, atomic_open, atomic_write_bytes, atomic_write_text


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


class _Stop(BaseException):
    """Stands for the SystemExit of a SIGTERM (or Ctrl-C's KeyboardInterrupt): any bytecode."""


@pytest.mark.parametrize("writer", ["write", "write_with", "atomic_open", "probe"])
def test_an_interrupt_right_after_the_temporary_file_is_created_leaves_nothing(tmp_path, monkeypatch, writer):
    # The exception arrives once the file exists but before the call returns its descriptor: the
    # moment a stop signal caught the converter in CI (a '.out_v0.json.<host>_<pid>_<rand>.tmp' left).
    real_open = os.open

    def open_then_stop(path, flags, mode=0o777, **kw):
        real_open(path, flags, mode, **kw)
        raise _Stop

    from point_sup_labels.file_io import probe_writable

    monkeypatch.setattr(os, "open", open_then_stop)
    target = tmp_path / "out.json"
    with pytest.raises(_Stop):
        if writer == "atomic_open":
            with atomic_open(target, "wb") as f:
                f.write(b"x")
        elif writer == "probe":
            probe_writable(target)
        else:
            with StagedFiles() as out:
                out.write(tmp_path / "first.json", b"1")
                if writer == "write":
                    out.write(target, b"x")
                else:
                    out.write_with(target, lambda tmp, fd: None)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_staging_goes_on_after_an_interrupted_file(tmp_path, monkeypatch):
    real_open, calls = os.open, []

    def open_then_stop_once(path, flags, mode=0o777, **kw):
        fd = real_open(path, flags, mode, **kw)
        calls.append(path)
        if len(calls) == 1:
            raise _Stop
        return fd

    monkeypatch.setattr(os, "open", open_then_stop_once)
    with StagedFiles() as out:
        with pytest.raises(_Stop):
            out.write(tmp_path / "a.json", b"A")
        out.write(tmp_path / "b.json", b"B")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["b.json"]
