"""ZFS output parsing, error messages and command vectors, on recorded outputs.

The zfs-fuse outputs below were recorded from Debian's zfs-fuse 0.7 (the pool
the host tests use); the `clones` listings are what FreeBSD's and OpenZFS's
`zfs list -H -o name,clones` print, which zfs-fuse cannot (it has no such
property). Where a command is needed, a scripted runner answers the exact
argument vectors with those recorded outputs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from kleened.host import cmd
from kleened.host.base import DatasetBusy, HostError, StorageError
from kleened.host.zfs import (
    ZfsStorage,
    check_name,
    in_tree,
    is_busy,
    is_missing,
    parse_clones,
    parse_mountpoint,
    parse_origin,
    parse_size,
    parse_table,
    zfs_error_message,
)

ZFS = "/sbin/zfs"

FUSE_USAGE_TAIL = (
    "usage:\n\tlist [-rH][-d max] [-o property[,...]] [-t type[,...]] [-s property] ...\n"
    "\t    [-S property] ... [filesystem|volume|snapshot] ...\n\n"
    "The following properties are supported:\n\n\tPROPERTY       EDIT  INHERIT   VALUES\n\n"
    "\tavailable        NO       NO   <size>\n"
)
FUSE_NO_CLONES = "bad property list: invalid property 'clones'\n" + FUSE_USAGE_TAIL
FUSE_NO_P = "invalid option 'p'\n" + FUSE_USAGE_TAIL
FUSE_DEPENDENT = (
    "cannot destroy 'kltestx/a': filesystem has dependent clones\n"
    "use '-R' to destroy the following datasets:\n"
    "kltestx/r1\n"
)
FUSE_BUSY = "cannot destroy 'kltestx/c1': dataset is busy\n"
OPENZFS_BUSY = "cannot destroy 'tank/c1': pool or dataset is busy\n"
FUSE_MISSING = "cannot open 'kltestx/nope': dataset does not exist\n"
FUSE_ORIGINS = "kltestx\t-\nkltestx/a\t-\nkltestx/a/child\t-\nkltestx/r1\tkltestx/a@s1\n"


def result(argv: Sequence[str], rc: int = 0, out: str = "", err: str = "") -> cmd.CommandResult:
    return cmd.CommandResult(tuple(argv), rc, out.encode(), err.encode())


# --------------------------------------------------------------------------- parsing


def test_parse_table_splits_tabs_and_skips_blank_lines():
    out = "zroot/kleene\t/zroot/kleene\tyes\n\nzroot/kleene/image\tnone\tno\n"
    assert parse_table(out, 3) == [
        ["zroot/kleene", "/zroot/kleene", "yes"],
        ["zroot/kleene/image", "none", "no"],
    ]
    # Empty values stay as columns (OpenZFS prints an empty `clones`).
    assert parse_table("tank/a@s\t\n", 2) == [["tank/a@s", ""]]
    assert parse_table("", 1) == []


def test_parse_table_refuses_the_wrong_shape():
    with pytest.raises(StorageError, match="unexpected zfs output"):
        parse_table("kltestx 364K /tmp/zx/mnt\n", 3)  # spaces: -H was not given


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("372736", 372736),
        ("0", 0),
        ("364K", 364 * 1024),
        ("1.50M", int(1.5 * 1024**2)),
        ("2G", 2 * 1024**3),
        ("512B", 512),
    ],
)
def test_parse_size(value, expected):
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", ["-", "", "none", "12Q", "-5"])
def test_parse_size_refuses_non_sizes(value):
    with pytest.raises(StorageError):
        parse_size(value)


def test_parse_origin_clones_and_mountpoint():
    assert parse_origin("-") is None
    assert parse_origin("") is None
    assert parse_origin("kltestx/a@s1") == "kltestx/a@s1"
    assert parse_clones("-") == []
    assert parse_clones("") == []
    assert parse_clones("tank/k/container/b,tank/k/container/a") == [
        "tank/k/container/a",
        "tank/k/container/b",
    ]
    assert parse_mountpoint("/zroot/kleene") == Path("/zroot/kleene")
    for none in ("none", "legacy", "-", ""):
        assert parse_mountpoint(none) is None


# --------------------------------------------------------------------------- messages


def test_error_message_is_zfs_own_words_without_usage():
    failed = result([ZFS, "list", "-H", "-p"], 2, err=FUSE_NO_P)
    assert zfs_error_message(failed) == "invalid option 'p'"
    failed = result([ZFS, "list", "-o", "clones"], 2, err=FUSE_NO_CLONES)
    assert zfs_error_message(failed) == "bad property list: invalid property 'clones'"


def test_error_message_keeps_multi_line_explanations():
    failed = result([ZFS, "destroy", "kltestx/a"], 1, err=FUSE_DEPENDENT)
    assert zfs_error_message(failed) == FUSE_DEPENDENT.strip()


def test_error_message_when_zfs_said_nothing():
    assert zfs_error_message(result([ZFS, "destroy", "x"], 1)) == "zfs destroy exited with code 1"
    assert zfs_error_message(result([ZFS], 2)) == "zfs exited with code 2"


def test_busy_and_missing_wordings():
    assert is_busy(FUSE_BUSY) and is_busy(OPENZFS_BUSY)
    assert not is_busy(FUSE_DEPENDENT)
    assert is_missing(FUSE_MISSING)
    assert not is_missing(FUSE_BUSY)


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name",
    ["zroot", "zroot/kleene/image/4a1b", "tank/a.b/c-d_e:f", "zroot/kleene/image/x@image", "a@1"],
)
def test_valid_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "-R", "a/-R", "../a", "a/..", "a/.", ".a", "a//b", "a/", "/a", "a b", "a@b@c",
     "a@-r", "a@", "a\tb", "a,b", "x" * 256],
)  # fmt: skip
def test_invalid_names(name):
    with pytest.raises(StorageError, match="invalid dataset name"):
        check_name(name)


def test_kind_of_name():
    check_name("a/b", kind="dataset")
    check_name("a/b@s", kind="snapshot")
    with pytest.raises(StorageError, match="not a snapshot"):
        check_name("a/b@s", kind="dataset")
    with pytest.raises(StorageError, match="expected a snapshot"):
        check_name("a/b", kind="snapshot")


def test_in_tree_is_not_a_prefix_match():
    assert in_tree("a/b", "a/b") and in_tree("a/b/c", "a/b")
    assert not in_tree("a/bc", "a/b") and not in_tree("a", "a/b")


# --------------------------------------------------------------------------- CLI vectors


class Scripted:
    """Answers exact argument vectors (after the zfs binary) with recorded results."""

    def __init__(self, answers: Mapping[tuple[str, ...], tuple[int, str, str]]) -> None:
        self.answers = dict(answers)
        self.calls: list[tuple[str, ...]] = []

    async def __call__(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        input: bytes | None = None,
    ) -> cmd.CommandResult:
        assert argv[0] == ZFS and timeout > 0
        args = tuple(argv[1:])
        self.calls.append(args)
        if args not in self.answers:
            raise AssertionError(f"unexpected command: zfs {' '.join(args)}")
        rc, out, err = self.answers[args]
        return result(argv, rc, out, err)


EXISTS_IMG = ("list", "-H", "-o", "name", "-t", "all", "zroot/k/image/img")
CLONES_IMG = ("list", "-H", "-o", "name,clones", "-t", "snapshot", "-r", "zroot/k/image/img")


async def test_destroy_with_clones_names_them_and_runs_no_destroy():
    runner = Scripted(
        {
            EXISTS_IMG: (0, "zroot/k/image/img\n", ""),
            CLONES_IMG: (
                0,
                "zroot/k/image/img@image\tzroot/k/container/c2,zroot/k/container/c1\n"
                "zroot/k/image/img@snap1\t\n",
                "",
            ),
        }
    )
    storage = ZfsStorage(ZFS, runner=runner, backend="cli")
    with pytest.raises(DatasetBusy) as err:
        await storage.destroy("zroot/k/image/img")
    assert str(err.value) == (
        "cannot destroy 'zroot/k/image/img': it has dependent clones: "
        "zroot/k/container/c1, zroot/k/container/c2"
    )
    assert not any(call[0] == "destroy" for call in runner.calls)


async def test_destroy_uses_dash_capital_r_only_for_clones_inside_the_tree():
    inner = ("destroy", "-R", "zroot/k/image/img")
    plain = ("destroy", "-r", "zroot/k/image/img")
    runner = Scripted(
        {
            EXISTS_IMG: (0, "zroot/k/image/img\n", ""),
            CLONES_IMG: (0, "zroot/k/image/img@image\tzroot/k/image/img/sub\n", ""),
            inner: (0, "", ""),
        }
    )
    await ZfsStorage(ZFS, runner=runner, backend="cli").destroy("zroot/k/image/img")
    assert runner.calls[-1] == inner
    runner = Scripted(
        {
            EXISTS_IMG: (0, "zroot/k/image/img\n", ""),
            CLONES_IMG: (0, "zroot/k/image/img@image\t-\n", ""),
            plain: (0, "", ""),
        }
    )
    await ZfsStorage(ZFS, runner=runner, backend="cli").destroy("zroot/k/image/img")
    assert runner.calls[-1] == plain


async def test_without_a_clones_property_origins_are_listed_once_per_call():
    probe = ("list", "-H", "-o", "name,clones", "-t", "snapshot", "-d", "1", "kltestx/a")
    origins = ("list", "-H", "-o", "name,origin", "-t", "filesystem,volume", "-r", "kltestx")
    runner = Scripted({probe: (2, "", FUSE_NO_CLONES), origins: (0, FUSE_ORIGINS, "")})
    storage = ZfsStorage(ZFS, runner=runner, backend="cli")
    assert await storage.clones_of("kltestx/a") == ["kltestx/r1"]
    assert await storage.clones_of("kltestx/a") == ["kltestx/r1"]
    assert runner.calls == [probe, origins, origins]  # the probe is not repeated
    with pytest.raises(StorageError, match="dataset does not exist"):
        await storage.clones_of("kltestx/gone")


async def test_busy_destroy_is_retried_within_the_budget_then_reported():
    exists = ("list", "-H", "-o", "name", "-t", "all", "kltestx/c1")
    clones = ("list", "-H", "-o", "name,clones", "-t", "snapshot", "-r", "kltestx/c1")
    destroy = ("destroy", "-r", "kltestx/c1")
    unmount = ("unmount", "kltestx/c1")
    remount = ("list", "-H", "-o", "name,canmount,mounted", "-t", "filesystem", "-r", "kltestx/c1")
    runner = Scripted(
        {
            exists: (0, "kltestx/c1\n", ""),
            clones: (0, "", ""),
            destroy: (1, "", FUSE_BUSY),
            unmount: (1, "", "cannot unmount 'kltestx/c1': pool or dataset is busy\n"),
            remount: (0, "kltestx/c1\ton\tyes\n", ""),
        }
    )
    storage = ZfsStorage(ZFS, runner=runner, backend="cli", busy_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(DatasetBusy, match="dataset is busy"):
        await storage.destroy("kltestx/c1")
    assert time.monotonic() - started < 1.5
    assert runner.calls.count(destroy) >= 3
    # One unmount to help it along (its own failure is not what is reported),
    # and a last look that the dataset is still mounted.
    assert runner.calls.count(unmount) == 1
    assert runner.calls[-1] == remount


async def test_rename_remounts_what_zfs_left_unmounted():
    rename = ("rename", "kltestx/build", "kltestx/image")
    listing = ("list", "-H", "-o", "name,canmount,mounted", "-t", "filesystem", "-r")
    runner = Scripted(
        {
            rename: (0, "", ""),
            (*listing, "kltestx/image"): (
                0,
                "kltestx/image\ton\tno\nkltestx/image/sub\toff\tno\n",
                "",
            ),
            ("mount", "kltestx/image"): (0, "", ""),
        }
    )
    await ZfsStorage(ZFS, runner=runner, backend="cli").rename("kltestx/build", "kltestx/image")
    assert runner.calls == [rename, (*listing, "kltestx/image"), ("mount", "kltestx/image")]


async def test_missing_dataset_errors_carry_zfs_message():
    origin = ("list", "-H", "-o", "origin", "kltestx/nope")
    runner = Scripted({origin: (1, "", FUSE_MISSING)})
    with pytest.raises(StorageError) as err:
        await ZfsStorage(ZFS, runner=runner, backend="cli").origin("kltestx/nope")
    assert str(err.value) == "cannot open 'kltestx/nope': dataset does not exist"


async def test_used_and_mountpoint_vectors():
    used = ("get", "-H", "-p", "-o", "value", "used", "kltestx/a")
    mounted = ("list", "-H", "-o", "mountpoint,mounted", "kltestx/a")
    unmounted = ("list", "-H", "-o", "mountpoint,mounted", "kltestx/b")
    legacy = ("list", "-H", "-o", "mountpoint,mounted", "kltestx/c")
    runner = Scripted(
        {
            used: (0, "372736\n", ""),
            mounted: (0, "/tmp/zx/mnt/a\tyes\n", ""),
            unmounted: (0, "/tmp/zx/mnt/b\tno\n", ""),
            legacy: (0, "legacy\tno\n", ""),
        }
    )
    storage = ZfsStorage(ZFS, runner=runner, backend="cli")
    assert await storage.used_space("kltestx/a") == 372736
    assert await storage.mountpoint("kltestx/a") == Path("/tmp/zx/mnt/a")
    with pytest.raises(StorageError, match="is not mounted"):
        await storage.mountpoint("kltestx/b")
    with pytest.raises(StorageError, match="has no mountpoint"):
        await storage.mountpoint("kltestx/c")


# --------------------------------------------------------------------------- host.cmd


async def test_run_keeps_stdout_and_stderr_apart_with_a_minimal_environment():
    done = await cmd.run(
        ["/bin/sh", "-c", 'echo out; echo err >&2; echo "$PATH $LC_ALL"; exit 3'], timeout=10
    )
    assert (done.returncode, done.err) == (3, "err\n")
    assert done.out == f"out\n{cmd.SAFE_PATH} C\n"
    assert not done.ok


async def test_run_feeds_input():
    done = await cmd.run(["cat"], timeout=10, input=b"data\x00bytes")
    assert done.stdout == b"data\x00bytes"


async def test_run_timeout_kills_the_process_group(tmp_path: Path):
    pidfile = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(cmd.CommandTimeout, match=r"did not finish within 0\.3 s"):
        await cmd.run(["/bin/sh", "-c", f"sleep 30 & echo $! > {pidfile}; wait"], timeout=0.3)
    assert time.monotonic() - started < 5
    grandchild = int(pidfile.read_text())
    for _ in range(50):  # killed at once; init may take a moment to reap it
        status = Path(f"/proc/{grandchild}/status")
        if not status.exists() or "State:\tZ" in status.read_text():
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the command's background child survived the timeout")


async def test_run_reports_a_missing_program():
    with pytest.raises(cmd.CommandNotStarted, match="could not run /nonexistent/zfs"):
        await cmd.run(["/nonexistent/zfs", "list"], timeout=5)


async def test_check_output_raises_the_callers_error_with_the_message():
    assert await cmd.check_output(["echo", "fine"], timeout=5) == "fine\n"
    with pytest.raises(StorageError, match=r"^nope$"):
        await cmd.check_output(
            ["/bin/sh", "-c", "echo nope >&2; exit 1"], timeout=5, error=StorageError
        )
    with pytest.raises(StorageError, match="false exited with code 1"):
        await cmd.check_output(["false"], timeout=5, error=StorageError)
    with pytest.raises(HostError, match="could not run"):
        await cmd.check_output(["/nonexistent"], timeout=5)


async def test_pipeline_connects_the_two_commands():
    first, second = await cmd.run_pipeline(
        ["/bin/sh", "-c", "echo one; echo two; echo warn >&2"], ["wc", "-l"], timeout=10
    )
    assert first.ok and first.err == "warn\n"
    assert second.ok and second.out.strip() == "2"


async def test_pipeline_timeout_stops_both():
    with pytest.raises(cmd.CommandTimeout):
        await asyncio.wait_for(cmd.run_pipeline(["sleep", "30"], ["cat"], timeout=0.3), timeout=10)
