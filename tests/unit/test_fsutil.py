"""fsutil: atomic writes (change, no change, mode, stale temps, failure), capped reads, JSON state files."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wgagent import fsutil
from wgagent.errors import WriteError

ROOT = Path(__file__).resolve().parents[2]
NO_SUCH_PID = 4_194_400
"""Above the largest pid_max Linux allows (2**22): kill(pid, 0) says ESRCH, as for a dead writer."""


def temps(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if ".wgagent-tmp-" in n)


# --- atomic_write ------------------------------------------------------------------------------------


def test_a_new_file_is_written_with_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    assert fsutil.atomic_write(str(path), b"a: 1\n") is True
    assert path.read_bytes() == b"a: 1\n"
    assert path.stat().st_mode & 0o7777 == 0o600  # the default: state may hold what others must not read
    assert temps(tmp_path) == []


def test_the_same_content_again_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    fsutil.atomic_write(str(path), b"a: 1\n")
    before = path.stat()
    assert fsutil.atomic_write(str(path), b"a: 1\n") is False
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not even renamed


def test_new_content_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    fsutil.atomic_write(str(path), b"a: 1\n")
    inode = path.stat().st_ino
    assert fsutil.atomic_write(str(path), b"a: 2\n") is True
    assert path.read_bytes() == b"a: 2\n"
    assert path.stat().st_ino != inode  # a new file renamed over the old one, never written in place
    assert temps(tmp_path) == []


def test_the_mode_is_exact_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "modules.conf"
    old = os.umask(0o077)
    try:
        fsutil.atomic_write(str(path), b"wireguard\n", mode=0o644)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o7777 == 0o644


def test_a_mode_change_alone_is_applied_but_is_no_content_change(tmp_path: Path) -> None:
    path = tmp_path / "a.conf"
    fsutil.atomic_write(str(path), b"x\n", mode=0o600)
    assert fsutil.atomic_write(str(path), b"x\n", mode=0o644) is False
    assert path.stat().st_mode & 0o7777 == 0o644


def test_missing_directories_are_made_unless_told_not_to(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml.d" / "50-wgagent.yaml"
    assert fsutil.atomic_write(str(path), b"k: v\n") is True
    assert path.read_bytes() == b"k: v\n"
    with pytest.raises(WriteError, match=r"^cannot write .*/nowhere/x: No such file or directory$"):
        fsutil.atomic_write(str(tmp_path / "nowhere" / "x"), b"x", make_dirs=False)
    assert not (tmp_path / "nowhere").exists()


def test_a_dead_writers_temp_file_is_removed_and_a_live_ones_kept(tmp_path: Path) -> None:
    dead = tmp_path / f".a.yaml.wgagent-tmp-{NO_SUCH_PID}"
    live = tmp_path / ".a.yaml.wgagent-tmp-1"  # PID 1 runs: its write may be under way
    mine = tmp_path / f".a.yaml.wgagent-tmp-{os.getpid()}"  # left by an earlier process with our PID
    other = tmp_path / f".b.yaml.wgagent-tmp-{NO_SUCH_PID}"  # another file's: not ours to judge
    for stale in (dead, live, mine, other):
        stale.write_bytes(b"half a fi")
    fsutil.atomic_write(str(tmp_path / "a.yaml"), b"whole\n")
    assert temps(tmp_path) == sorted([live.name, other.name])
    assert (tmp_path / "a.yaml").read_bytes() == b"whole\n"


def test_a_temp_file_is_no_yaml_or_conf_for_a_reader_by_suffix(tmp_path: Path) -> None:
    # k3s reads config.yaml.d/*.yaml and systemd-modules-load *.conf: a temp file must match neither.
    dead = tmp_path / f".50-wgagent.yaml.wgagent-tmp-{NO_SUCH_PID}"
    dead.write_bytes(b"")
    assert not dead.name.endswith((".yaml", ".conf")) and dead.name.startswith(".")


FAILING_WRITE = """
import resource, signal, sys
from wgagent import fsutil
from wgagent.errors import WriteError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (64, resource.RLIM_INFINITY))
try:
    fsutil.atomic_write(sys.argv[1], b"new " * 1000)
except WriteError as exc:
    print(exc)
    sys.exit(3)
finally:  # whatever else writes at exit (a coverage data file) may write again
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
"""


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    # A real failure, not a patched one: a child process whose file size limit the new
    # content exceeds (like a full disk, the write itself fails midway).
    path = tmp_path / "state.json"
    path.write_bytes(b'{"old": true}\n')
    out = subprocess.run(
        [sys.executable, "-c", FAILING_WRITE, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 3, out.stderr
    assert out.stdout == f"cannot write {path}: {os.strerror(errno.EFBIG)}\n"
    assert path.read_bytes() == b'{"old": true}\n'
    assert temps(tmp_path) == []


def test_an_unreadable_target_is_a_write_error_naming_it(tmp_path: Path) -> None:
    target = tmp_path / "a-directory"
    target.mkdir()
    with pytest.raises(WriteError, match=rf"^cannot read {target}: Is a directory$"):
        fsutil.atomic_write(str(target), b"x")
    assert temps(tmp_path) == []


# --- reads ----------------------------------------------------------------------------------------------


def test_read_bytes(tmp_path: Path) -> None:
    assert fsutil.read_bytes(str(tmp_path / "missing")) is None
    (tmp_path / "f").write_bytes(b"\x00\xff")
    assert fsutil.read_bytes(str(tmp_path / "f")) == b"\x00\xff"


def test_read_capped(tmp_path: Path) -> None:
    path = tmp_path / "f"
    assert fsutil.read_capped(str(path), 4) is None
    path.write_bytes(b"1234")
    assert fsutil.read_capped(str(path), 4) == b"1234"  # exactly the cap is fine
    path.write_bytes(b"12345")
    with pytest.raises(fsutil.FileTooLarge) as exc:
        fsutil.read_capped(str(path), 4)
    assert isinstance(exc.value, OSError) and exc.value.errno == errno.EFBIG
    assert exc.value.strerror == "larger than 4 bytes" and exc.value.filename == str(path)


def test_read_capped_never_reads_a_file_whole() -> None:
    with pytest.raises(fsutil.FileTooLarge):
        fsutil.read_capped("/dev/zero", 1 << 16)  # endless: it must stop after the cap


def test_read_capped_passes_other_errors_on(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError):
        fsutil.read_capped(str(tmp_path), 10)


def test_peek_text(tmp_path: Path) -> None:
    path = tmp_path / "uevent"
    assert fsutil.peek_text(str(path), 100) is None
    assert fsutil.peek_text(str(tmp_path), 100) is None  # any OSError: advice, not input
    path.write_bytes(b"DEVTYPE=wireguard\nINTERFACE=\xffwg0\n")
    assert fsutil.peek_text(str(path), 100) == "DEVTYPE=wireguard\nINTERFACE=\ufffdwg0\n"
    assert fsutil.peek_text(str(path), 7) == "DEVTYPE"


# --- JSON state files ---------------------------------------------------------------------------------


def test_save_json_writes_sorted_and_only_on_change(tmp_path: Path) -> None:
    path = str(tmp_path / "state" / "first-seen.json")
    assert fsutil.save_json(path, {"b": 1, "a": [1, 2]}) is True
    assert Path(path).read_text() == '{\n "a": [\n  1,\n  2\n ],\n "b": 1\n}\n'
    assert fsutil.save_json(path, {"a": [1, 2], "b": 1}) is False  # same state, other key order
    assert fsutil.load_json(path) == {"a": [1, 2], "b": 1}


def test_load_json_of_a_missing_file_is_none_quietly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert fsutil.load_json(str(tmp_path / "missing.json")) is None
    assert caplog.records == []


@pytest.mark.parametrize(
    ("content", "warning"),
    [
        pytest.param(b'{"a": ', "is not valid JSON; starting without it", id="truncated"),
        pytest.param(b"\xff\xfe", "is not valid JSON; starting without it", id="binary"),
        pytest.param(None, "cannot read state file", id="unreadable"),
    ],
)
def test_a_bad_state_file_is_none_and_logged_never_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes | None, warning: str
) -> None:
    path = tmp_path / "adoption.json"
    if content is None:
        path.mkdir()  # reading it fails with EISDIR
    else:
        path.write_bytes(content)
    with caplog.at_level(logging.WARNING):
        assert fsutil.load_json(str(path)) is None
    assert warning in caplog.text and str(path) in caplog.text


def test_json_round_trip_keeps_what_state_files_hold(tmp_path: Path) -> None:
    value = {"interfaces": {"flannel-wg": {"k+/=": 1_800_000_000.5}}, "version": 1, "none": None}
    path = str(tmp_path / "s.json")
    fsutil.save_json(path, value)
    assert fsutil.load_json(path) == value
    assert json.loads(Path(path).read_bytes()) == value
