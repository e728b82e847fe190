"""The one-shot collection under adverse conditions: the fragmentation child, start/abandon.

Real parts throughout: real child interpreters, real temp trees, the real runner and CLI.
Every test is bounded in time (children are looked for with deadlines, and any left
behind are killed by pid in ``finally``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from agent.collect import CollectContext, CollectionResult, CollectionSpec, Collector, run_collection, start_collection
from agent.collect.builtin import fragmentation_linux as lin
from agent.collect.fiemap import fragments_of, open_verified
from agent.oneshot import prepare_collection
from protos import facts_pb2
from tests.agent.fragfiles import write_interleaved

Status = facts_pb2.CollectorStatus
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the fragmentation child is Linux-only")


def _status(result: CollectionResult, name: str) -> facts_pb2.CollectorStatus:
    (status,) = [s for s in result.statuses if s.name == name]
    return status


def _fiemap_or_skip(path: Path) -> None:
    try:
        fragments_of(str(path))
    except OSError as exc:
        pytest.skip(f"no FIEMAP on the temp filesystem: {exc}")


def _interleaved(paths: list[Path], rounds: list[int]) -> None:
    write_interleaved(paths, rounds)
    os.sync()


# --- a file name that is not UTF-8 costs no facts ------------------------------------------


@pytest.mark.parametrize("walker", ["child", "thread"])
def test_a_non_utf8_file_name_does_not_lose_the_fragmentation_facts(tmp_path: Path, walker: str) -> None:
    """Any local user can name a file with bytes that are not UTF-8; the walk decodes it
    with surrogateescape, and shown paths are escaped so the facts still fit a protobuf
    string (they were lost for every filesystem)."""
    tree = tmp_path / "tree"
    tree.mkdir()
    bad = os.fsencode(tree) + b"/report\xff.db"
    _interleaved([Path(os.fsdecode(bad)), tree / "other.db"], [24, 24])
    _fiemap_or_skip(tree / "other.db")
    assert fragments_of(os.fsdecode(bad)).fragments > 1  # so it is among the worst files

    spec = CollectionSpec(
        only=("fragmentation",),
        options={"frag_mountpoints": str(tree), "frag_walker": walker, "frag_budget_s": 3.0},
    )
    with run_collection(spec) as result:
        status = _status(result, "fragmentation")
        assert status.state == Status.OK, status.error  # was: ERROR, UnicodeEncodeError
        (fs,) = result.snapshot.fragmentation.filesystems
        assert fs.files_sampled == 2


# --- a child that cannot be started: sampled in-process instead ----------------------------


@contextlib.contextmanager
def _ext4_or_xfs_dir(tmp_path: Path) -> Iterator[str]:
    """A directory that is an ext4/XFS mount point (GETFSMAP runs in a child for those)."""
    for p in psutil.disk_partitions(all=True):
        if p.fstype in lin.FREE_SPACE_FSTYPES and os.path.isdir(p.mountpoint) and os.access(p.mountpoint, os.R_OK):
            yield p.mountpoint
            return
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
        pytest.skip("no ext4/XFS mount point here and none can be made (needs root and mkfs.ext4)")
    img, mnt = tmp_path / "ext4.img", tmp_path / "mnt"
    mnt.mkdir()
    with open(img, "wb") as fh:
        fh.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True, capture_output=True, timeout=60)
    done = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        pytest.skip(f"cannot mount an ext4 loop image: {done.stderr.strip()}")
    try:
        yield str(mnt)
    finally:
        subprocess.run(["umount", str(mnt)], check=False, capture_output=True, timeout=60)


def test_a_child_that_fails_to_start_falls_back_instead_of_failing_the_collector(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Popen raises OSError for EAGAIN (a pids cgroup / TasksMax limit), ENOMEM, EMFILE or
    ENOEXEC, not only ENOENT/EACCES. Here the interpreter is a real file that the kernel
    refuses to execute (ENOEXEC), the easiest of those to make on purpose: the sample
    falls back to a thread, and GETFSMAP's failure becomes a reason, not the collector's."""
    bogus = tmp_path / "python-not-executable-format"
    bogus.write_bytes(b"\x00\x01 not an ELF and no #! line\n")
    bogus.chmod(0o755)
    with _ext4_or_xfs_dir(tmp_path) as mountpoint:
        monkeypatch.setattr(sys, "executable", str(bogus))  # what _run_child starts
        spec = CollectionSpec(only=("fragmentation",), options={"frag_mountpoints": mountpoint, "frag_budget_s": 0.2})
        with run_collection(spec) as result:
            status = _status(result, "fragmentation")
            assert status.state == Status.OK, status.error  # was: ERROR "[Errno 8] Exec format error"
            (fs,) = result.snapshot.fragmentation.filesystems
            assert "not sampled" not in fs.note  # sampled in-process, as with no executable at all
            assert any("in-process" in w for _, w in result.warnings)


# --- a collection given up, or a refused command, leaves no child running -----------------


def _fragwalk_children(op: str = "sample") -> list[psutil.Process]:
    found = []
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(p.cmdline())
            if "child_main" in cmd and f'"op": "{op}"' in cmd:
                found.append(p)
    return found


def _gone(p: psutil.Process, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


def test_abandoning_a_collection_stops_its_fragmentation_child() -> None:
    """abandon() (the CLI's error path, Ctrl-C in wait) kills the commands its collectors
    run: the child is in a session of its own, so the terminal's SIGINT does not reach it,
    and frag_budget_s may be up to 3600 s. The child is stopped here as soon as it appears, standing for a
    walk that lasts (a big filesystem) or a child blocked in the kernel."""
    spec = CollectionSpec(
        only=("fragmentation",),
        options={"frag_mountpoints": "/usr", "frag_budget_s": 20.0, "frag_min_bytes": 1 << 40},
        budgets={"fragmentation": 25.0},
        total_budget_s=25.0,
    )
    running = start_collection(spec)
    child: psutil.Process | None = None
    try:
        deadline = time.monotonic() + 10
        while child is None and time.monotonic() < deadline:
            found = _fragwalk_children()
            child = found[0] if found else None
            time.sleep(0.002)
        assert child is not None, "no fragmentation child was started"
        with contextlib.suppress(psutil.NoSuchProcess):
            child.suspend()
        running.abandon()
        assert _gone(child, 2.0), "the child outlives the abandoned collection (until budget + 1 s = 21 s)"
    finally:
        running.abandon()
        if child is not None:
            with contextlib.suppress(psutil.Error):
                child.kill()  # by pid; the collector thread's run_command reaps it


_SUBREAPER_RUN = textwrap.dedent(
    """
    import ctypes, json, os, signal, subprocess, sys, time
    import psutil
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER: orphans come to us
    cli = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=60)
    time.sleep(0.05)
    left = []
    for p in psutil.Process().children():
        try:
            left.append({"pid": p.pid, "status": p.status(), "cmd": " ".join(p.cmdline())[:200]})
        except psutil.Error:
            left.append({"pid": p.pid, "status": "zombie", "cmd": ""})
        try:
            os.kill(p.pid, signal.SIGKILL)
            os.waitpid(p.pid, 0)
        except OSError:
            pass
    print(json.dumps({"rc": cli.returncode, "stderr": cli.stderr[-500:], "left": left}))
    """
)


def test_a_refused_collect_command_leaves_no_process_behind(tmp_path: Path) -> None:
    """`casefile collect` starts collecting before it loads redaction (which checks the
    profile): a refused command gives the collection up, and its fragmentation child,
    walking as root, stops too — it also watches for its parent going away."""
    home = tmp_path / "home"
    cli = [
        sys.executable, "-m", "agent.cli", "collect", "--home", str(home), "--preview",
        "--profile", "no-such-profile", "--only", "fragmentation",
        "--set", "frag_mountpoints=/usr", "--set", "frag_budget_s=20", "--set", f"frag_min_bytes={1 << 40}",
        "--budget", "fragmentation=25",
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", _SUBREAPER_RUN, *cli], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["rc"] == 2 and "unknown 'no-such-profile'" in report["stderr"]  # a usage error
    # A child killed on the way out and not yet reaped (a zombie) is not left behind.
    running = [p for p in report["left"] if p["status"] != "zombie"]
    assert running == [], f"processes left behind by the refused command: {running}"


# --- the same frag_seed samples the same files in a child and in a thread -----------------


def test_the_same_seed_samples_the_same_files_in_child_and_thread_modes(tmp_path: Path) -> None:
    """A seed is derived once per filesystem and used the same way by the child and by the
    thread (the fallback), so frag_seed reproduces a case whichever mode collected it."""
    tree = tmp_path / "tree"
    tree.mkdir()
    paths = [tree / f"f{i:02d}" for i in range(24)]
    _interleaved(paths, [1 + i % 12 for i in range(24)])
    _fiemap_or_skip(paths[0])

    def facts(walker: str) -> facts_pb2.FsFragmentation:
        spec = CollectionSpec(
            only=("fragmentation",),
            options={
                "frag_mountpoints": str(tree),
                "frag_walker": walker,
                "frag_seed": 5,
                "frag_max_files": 8,
                "frag_budget_s": 10.0,
            },
            budgets={"fragmentation": 15.0},
        )
        with run_collection(spec) as result:
            assert _status(result, "fragmentation").state == Status.OK
            (fs,) = result.snapshot.fragmentation.filesystems
        for name in ("duration_s", "budget_s", "free_space"):
            fs.ClearField(name)
        return fs

    child, child_again, thread = facts("child"), facts("child"), facts("thread")
    assert child == child_again  # reproducible within a mode
    assert "whole filesystem" in child.note and "whole filesystem" in thread.note
    assert thread == child


# --- prepare_collection gives up a running collection it refuses ------------------------


class _Scratch(Collector):
    name = "review_scratch"
    description = "leaves a file in its temp directory, then sleeps through a window"
    budget_s = 3.0
    written: list[Path] = []  # noqa: RUF012 - one test at a time

    def collect(self, ctx: CollectContext) -> None:
        path = ctx.temp_path("scratch.txt")
        path.write_text("partial")
        _Scratch.written.append(path)
        time.sleep(0.5)


def test_a_running_collection_passed_with_a_spec_is_abandoned() -> None:
    """A collection that cannot be prepared is abandoned, also when the arguments were
    wrong (a spec and a running collection both)."""
    _Scratch.written.clear()
    running = start_collection(CollectionSpec(), collectors=[_Scratch])
    try:
        deadline = time.monotonic() + 5
        while not _Scratch.written and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _Scratch.written
        with pytest.raises(ValueError, match="not both"):
            prepare_collection(key=None, spec=CollectionSpec(), running=running, preview=True)
        assert not _Scratch.written[0].exists()
    finally:
        running.abandon()


# --- a sampled file is opened only if it is still the file the walk saw -------------------


def test_a_swapped_directory_cannot_lead_the_sampler_outside_the_walked_tree(tmp_path: Path) -> None:
    """A user who owns a directory on the walked path swaps it for a symlink between the walk
    and the FIEMAP pass; O_NOFOLLOW guards only the last component. The root sampler must
    not open what the symlink leads to (open(2) of a device can act: /dev/watchdog arms on
    open); a FIFO outside the tree shows whether it was opened."""
    tree, outside = tmp_path / "tree", tmp_path / "outside"
    (tree / "d").mkdir(parents=True)
    victim = tree / "d" / "victim"
    victim.write_bytes(os.urandom(70_000))
    seen = victim.stat()  # what the walk recorded
    outside.mkdir()
    fifo = outside / "victim"
    os.mkfifo(fifo)
    opened = threading.Event()

    def writer() -> None:
        fd = os.open(fifo, os.O_WRONLY)  # blocks until someone opens the FIFO for reading
        opened.set()
        os.close(fd)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    time.sleep(0.2)  # the writer is blocked in open(2)
    (tree / "d").rename(tree / "d.old")  # the attacker's move, after the walk
    (tree / "d").symlink_to(outside)
    try:
        with pytest.raises(OSError, match="not the regular file the walk saw"):
            open_verified(str(victim), seen.st_dev, seen.st_ino)
        escaped = opened.wait(0.5)
    finally:
        if not opened.is_set():  # release the writer
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        t.join(5)
    assert not escaped, "the sampler (root, in the agent) opened a file outside the tree it walked"
    # The file itself, unchanged, is opened.
    (tree / "d").unlink()
    (tree / "d.old").rename(tree / "d")
    fd = open_verified(str(victim), seen.st_dev, seen.st_ino)
    os.close(fd)
