"""The atomic writer behind every asg-data writer: permissions kept, symlinks written through, no temp
files left after an error, and a writer killed with SIGKILL never leaves a truncated file."""

from __future__ import annotations

import gzip
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from asg.data import CharTokenizer, MetricLogger, read_idx, write_cifar_binary, write_idx
from asg.data._atomic import atomic_write_bytes, atomic_writer

posix_only = pytest.mark.skipif(os.name != "posix", reason="permission bits and SIGKILL are POSIX")


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Every writer of asg-data, as (name, write(path, version)).
WRITERS = {
    "write_idx": lambda p, v: write_idx(p, np.full((4, 5), v, np.uint8)),
    "write_idx gzip": lambda p, v: write_idx(p, np.full((4, 5), v, np.uint8), compress=True),
    "write_cifar_binary": lambda p, v: write_cifar_binary(
        p, np.full((1, 3, 32, 32), v, np.uint8), [np.array([v])]
    ),
    "CharTokenizer.save": lambda p, v: CharTokenizer.fit("abc"[:v]).save(p),
    "MetricLogger.to_json": lambda p, v: _logger(v).to_json(p),
    "MetricLogger.to_csv": lambda p, v: _logger(v).to_csv(p),
}


def _logger(v: int) -> MetricLogger:
    log = MetricLogger()
    log.log(loss=float(v))
    return log


@posix_only
@pytest.mark.parametrize("writer", list(WRITERS))
def test_every_writer_keeps_the_mode_of_the_file_it_replaces(tmp_path: Path, writer: str) -> None:
    path = tmp_path / "out"
    WRITERS[writer](path, 1)
    assert _mode(path) == 0o666 & ~_current_umask()  # a new file: the umask default, not mkstemp's 0600
    os.chmod(path, 0o640)
    before = path.read_bytes()
    WRITERS[writer](path, 2)
    assert _mode(path) == 0o640
    assert path.read_bytes() != before
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_new_file_mode_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        atomic_write_bytes(tmp_path / "private", b"x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "private") == 0o600
    os.umask(0o002)
    try:
        atomic_write_bytes(tmp_path / "shared", b"x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "shared") == 0o664


@posix_only
@pytest.mark.parametrize("writer", list(WRITERS))
def test_every_writer_writes_through_a_symlink(tmp_path: Path, writer: str) -> None:
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "data"
    WRITERS[writer](target, 1)
    os.chmod(target, 0o604)
    link = tmp_path / "link"
    link.symlink_to(Path("real") / "data")  # relative, as `ln -s real/data link`
    WRITERS[writer](link, 2)
    expected = tmp_path / "expected"
    WRITERS[writer](expected, 2)
    assert link.is_symlink() and os.readlink(link) == os.path.join("real", "data")
    assert target.read_bytes() == expected.read_bytes()
    assert _mode(target) == 0o604
    assert sorted(os.listdir(tmp_path / "real")) == ["data"]


@posix_only
def test_a_dangling_symlink_creates_its_target(tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "later")
    write_idx(link, np.arange(3, dtype=np.uint8))
    assert link.is_symlink() and read_idx(tmp_path / "later").tolist() == [0, 1, 2]


def test_an_error_while_writing_leaves_the_old_file_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "images-idx3-ubyte.gz"
    write_idx(path, np.zeros((2, 3, 3), np.uint8))
    before = path.read_bytes()

    def disk_full(self: object, data: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gzip.GzipFile, "write", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        write_idx(path, np.ones((2, 3, 3), np.uint8))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name]

    class Interrupted(BaseException):
        pass

    with pytest.raises(Interrupted), atomic_writer(path) as f:  # even KeyboardInterrupt-like exits
        f.write(b"partial")
        raise Interrupted
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name]


def test_writer_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        write_idx(tmp_path / "missing" / "x", np.zeros(2, np.uint8))
    assert str(info.value) == (
        f"cannot write {str(tmp_path / 'missing' / 'x')!r}: its directory "
        f"{str(tmp_path / 'missing')!r} does not exist"
    )
    with pytest.raises(IsADirectoryError, match="it is a directory"):
        write_idx(tmp_path, np.zeros(2, np.uint8))


# A server that forks one writer per line read (numpy and asg.data imported once), reports its pid, and
# reports its exit status once the test has killed it.
_WRITER_SERVER = """
import os
import sys
import numpy as np
from asg.data import write_idx

path, n = sys.argv[1], int(sys.argv[2])
versions = [np.full(n, 2, np.uint8), np.full(n, 1, np.uint8)]
for _ in sys.stdin:
    pid = os.fork()
    if pid == 0:
        k = 0
        while True:
            write_idx(path, versions[k % 2])
            k += 1
    print(pid, flush=True)
    print(os.waitpid(pid, 0)[1], flush=True)
"""


@posix_only
def test_a_writer_killed_with_sigkill_never_leaves_a_truncated_file(tmp_path: Path) -> None:
    n = 4 << 20
    path = tmp_path / "labels-idx1-ubyte"
    write_idx(path, np.full(n, 1, np.uint8))
    rng = random.Random(0)
    server = subprocess.Popen(
        [sys.executable, "-c", _WRITER_SERVER, str(path), str(n)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdin is not None and server.stdout is not None
    try:
        for _ in range(20):
            server.stdin.write("go\n")
            server.stdin.flush()
            writer = int(server.stdout.readline())
            time.sleep(rng.uniform(0.005, 0.1))
            os.kill(writer, signal.SIGKILL)
            status = int(server.stdout.readline())
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            assert path.stat().st_size == 8 + n  # never truncated, never empty
            values = read_idx(path)
            assert values.min() == values.max() and values[0] in (1, 2)  # the old version or the new, whole
    finally:
        server.stdin.close()
        server.wait(timeout=30)
        server.stdout.close()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != path.name]
    # The kills really landed mid-write: a killed writer cannot remove its temporary file.
    assert leftovers and all(p.startswith(f".{path.name}.") and p.endswith(".tmp") for p in leftovers)
