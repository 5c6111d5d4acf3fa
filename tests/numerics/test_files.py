"""numerics/files.py: the one atomic write (temporary file in the folder, fsync, umask mode, os.replace)."""
import os

import pytest

from limitlab.numerics.files import atomic_write, umask


def test_replaces_the_file_whole_with_the_usual_mode(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("old")
    assert atomic_write(p, lambda fh: fh.write("new\n")) == str(p)
    assert p.read_text() == "new\n" and os.listdir(tmp_path) == ["a.txt"]
    assert (os.stat(p).st_mode & 0o777) == 0o666 & ~umask()
    atomic_write(p, lambda fh: fh.write(b"\x00\x01"), binary=True)
    assert p.read_bytes() == b"\x00\x01"


def test_an_interrupted_write_keeps_the_old_file_and_no_temporary(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("old")

    def fail(fh):
        fh.write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(p, fail)
    assert p.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


def test_by_path_hands_the_writer_a_file_name(tmp_path):
    p = tmp_path / "f.png"
    atomic_write(p, lambda tmp: open(tmp, "w").write("png"), by_path=True)
    assert p.read_text() == "png" and (os.stat(p).st_mode & 0o777) == 0o666 & ~umask()
    with pytest.raises(ZeroDivisionError):
        atomic_write(p, lambda tmp: open(tmp, "w").write("half") and 1 / 0, by_path=True)
    assert p.read_text() == "png" and os.listdir(tmp_path) == ["f.png"]
