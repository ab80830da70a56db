"""Linux jails for real: namespaces, the C reaper, ptys, adoption after a restart.

Runs as root on Linux with busybox-static; every test stops what it started,
and the session's host check fails the run on leaked mounts or processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kleened.host.base import ExecSpec, JailError, Jails, JailSpec, Process
from kleened.host.linux.jail import LinuxJails
from kleened.host.linux.mount import LinuxMounts
from kleened.host.linux.reaper import ensure_reaper_sync
from tests.fixtures.rootfs import TEST_SUPPLEMENTARY_GID, TEST_UID

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0, reason="Linux jails need root on Linux"
)

TIMEOUT = 20.0
NAME = "3f2a9c1d7e4b"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def libexec_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("libexec")
    ensure_reaper_sync(path)  # compile once for the session
    return path


@pytest.fixture
async def jails(tmp_path: Path, libexec_dir: Path) -> AsyncIterator[LinuxJails]:
    jails = LinuxJails(state_dir=tmp_path / "jails", libexec_dir=libexec_dir)
    yield jails
    for name in await jails.list_running():
        await jails.stop(name, timeout=2)
    # Every helper runs from this session's libexec dir: none may outlive the test.
    # (The session's host check cannot tell: these command lines mention pytest.)
    deadline = time.monotonic() + 5
    while left := [c for c in all_cmdlines() if str(libexec_dir) in c]:
        assert time.monotonic() < deadline, f"helpers left running: {left}"
        await asyncio.sleep(0.05)


async def collect(process: Process) -> bytes:
    out = b""
    async with asyncio.timeout(TIMEOUT):
        async for chunk in process.subscribe():
            out += chunk
    return out


async def run(jails: LinuxJails, root: Path, command: list[str], **kwargs) -> tuple[bytes, int]:
    """Start a jail, collect its output and status."""
    process = await jails.start(JailSpec(name=NAME, path=root, command=command, **kwargs))
    output = await collect(process)
    return output, await asyncio.wait_for(process.wait(), TIMEOUT)


async def execute(jails: LinuxJails, command: list[str], **kwargs) -> tuple[bytes, int]:
    process = await jails.exec(ExecSpec(name=NAME, command=command, **kwargs))
    output = await collect(process)
    return output, await asyncio.wait_for(process.wait(), TIMEOUT)


async def until(predicate, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


PR_SET_CHILD_SUBREAPER = 36


def adopted_helpers() -> list[int]:
    """Our children that are reaper helpers we did not spawn ourselves."""
    found = []
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        children = Path(f"/proc/{os.getpid()}/task/{task}/children").read_text().split()
        for pid in map(int, children):
            with contextlib.suppress(OSError):
                if b"kleened-reaper" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
    return found


@contextlib.contextmanager
def subreaper():
    """Adopt orphans for the test's duration, so the helpers a dead "daemon" left
    come to us to be reaped (this host's pid 1 does not reap them)."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


async def test_implements_the_protocol(jails: LinuxJails) -> None:
    assert isinstance(jails, Jails)


# ------------------------------------------------------------------ lifetime and status


async def test_jail_lives_while_any_process_does(jails: LinuxJails, busybox_rootfs: Path) -> None:
    begin = time.monotonic()
    process = await jails.start(
        JailSpec(name=NAME, path=busybox_rootfs, command=["sh", "-c", "sleep 1 & echo started"])
    )
    stream = process.subscribe()
    assert await asyncio.wait_for(anext(stream), TIMEOUT) == b"started\n"
    # as with jail(8), the first process ends with the command, output and all,
    # while its background sleep keeps the jail alive
    assert await asyncio.wait_for(process.wait(), TIMEOUT) == 0
    assert await collect_rest(stream) == b""
    assert time.monotonic() - begin < 0.9
    assert await jails.is_running(NAME)
    assert NAME in await jails.list_running()
    await asyncio.wait_for(jails.wait_stopped(NAME), TIMEOUT)
    assert time.monotonic() - begin >= 0.9
    assert not await jails.is_running(NAME)
    assert await jails.list_running() == {}


async def test_a_background_process_does_not_hold_the_first_process(
    jails: LinuxJails, busybox_rootfs: Path
) -> None:
    # stdout and stderr stay open in the daemon it started: still, the command's
    # end is reported at once, with its status, and later output is dropped
    command = ["sh", "-c", "(sleep 0.5; echo late) & echo early; exit 7"]
    process = await jails.start(JailSpec(name=NAME, path=busybox_rootfs, command=command))
    stream = process.subscribe()
    assert await asyncio.wait_for(process.wait(), TIMEOUT) == 7
    assert await collect_rest(stream) == b"early\n"
    assert await jails.is_running(NAME)
    await jails.stop(NAME)
    assert not await jails.is_running(NAME)


async def test_an_exec_left_running_in_the_background_does_not_hold_its_output(
    jails: LinuxJails, busybox_rootfs: Path
) -> None:
    first = await jails.start(JailSpec(name=NAME, path=busybox_rootfs, command=["sleep", "30"]))
    begin = time.monotonic()
    output, code = await execute(jails, ["sh", "-c", "sleep 30 & echo bg"])
    assert (output, code) == (b"bg\n", 0)
    assert time.monotonic() - begin < 5
    await jails.stop(NAME)
    await first.wait()


async def test_exit_status_is_the_commands(jails: LinuxJails, busybox_rootfs: Path) -> None:
    assert await run(jails, busybox_rootfs, ["sh", "-c", "exit 3"]) == (b"", 3)


async def test_a_killed_command_reports_128_plus_signal(
    jails: LinuxJails, busybox_rootfs: Path
) -> None:
    _, code = await run(jails, busybox_rootfs, ["sh", "-c", "kill -KILL $$"])
    assert code == 137


async def test_a_missing_command_is_reported_like_env(
    jails: LinuxJails, busybox_rootfs: Path
) -> None:
    output, code = await run(jails, busybox_rootfs, ["no-such-program"])
    assert b"no-such-program: No such file or directory" in output
    assert code == 127


async def test_wait_stopped_returns_when_the_jail_ends(
    jails: LinuxJails, busybox_rootfs: Path
) -> None:
    process = await jails.start(JailSpec(name=NAME, path=busybox_rootfs, command=["sleep", "0.3"]))
    await asyncio.wait_for(jails.wait_stopped(NAME), TIMEOUT)
    assert not await jails.is_running(NAME)
    assert await process.wait() == 0
    await jails.wait_stopped(NAME)  # not running: returns at once


# ------------------------------------------------------------------ isolation


async def test_ps_shows_only_the_jails_processes(jails: LinuxJails, busybox_rootfs: Path) -> None:
    output, code = await run(jails, busybox_rootfs, ["ps", "-o", "pid,comm"])
    rows = [line.split() for line in output.decode().splitlines()[1:]]
    assert code == 0
    assert [pid for pid, _ in rows] == ["1", "2"]  # the reaper and ps itself
    assert rows[1][1] == "ps"


async def test_hostname_is_the_container_id(jails: LinuxJails, busybox_rootfs: Path) -> None:
    assert await run(jails, busybox_rootfs, ["hostname"]) == (f"{NAME}\n".encode(), 0)
    own = await run(jails, busybox_rootfs, ["hostname"], jail_params=["host.hostname=web1"])
    assert own == (b"web1\n", 0)
    assert os.uname().nodename not in (NAME, "web1")  # the host's is untouched


async def test_files_outside_the_root_are_not_visible(
    jails: LinuxJails, busybox_rootfs: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("host only\n")
    output, code = await run(
        jails,
        busybox_rootfs,
        ["sh", "-c", f"cat {secret}; ls /; cat /proc/1/root{secret}; ls /proc/1/root/"],
    )
    text = output.decode()
    assert "host only" not in text
    assert code != 0
    listing = set(text.split())
    assert {"bin", "etc", "proc", "dev"} <= listing
    assert "work" not in listing and "usr" in listing


async def test_private_dev_and_proc(jails: LinuxJails, busybox_rootfs: Path) -> None:
    output, code = await run(
        jails,
        busybox_rootfs,
        ["sh", "-c", "ls /dev; echo x > /dev/null; head -c 4 /dev/zero | wc -c"],
    )
    entries = output.decode().split()
    assert code == 0
    for name in ("null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "fd"):
        assert name in entries
    assert entries[-1] == "4"
    # nothing the jail mounted is visible on the host
    assert str(busybox_rootfs) not in Path("/proc/self/mountinfo").read_text()


async def test_root_in_the_jail_cannot_mount_or_make_devices(
    jails: LinuxJails, busybox_rootfs: Path
) -> None:
    output, code = await run(
        jails,
        busybox_rootfs,
        [
            "sh",
            "-c",
            "mount -t tmpfs none /tmp && echo mounted; mknod /tmp/disk b 254 0 && echo made",
        ],
    )
    assert b"mounted" not in output and b"made" not in output
    assert code != 0


async def test_network_modes(jails: LinuxJails, busybox_rootfs: Path) -> None:
    host_net = os.readlink("/proc/self/ns/net")
    output, _ = await run(jails, busybox_rootfs, ["ip", "-o", "link"], network_mode="disabled")
    links = [line.split(":")[1].strip() for line in output.decode().splitlines()]
    assert links == ["lo"]
    assert b"UP" in output

    seen: list[str] = []

    async def before_command(pid: int) -> None:
        seen.append(os.readlink(f"/proc/{pid}/ns/net"))

    process = await jails.start(
        JailSpec(name=NAME, path=busybox_rootfs, command=["true"], network_mode="new"),
        before_command=before_command,
    )
    assert await asyncio.wait_for(process.wait(), TIMEOUT) == 0
    assert len(seen) == 1 and seen[0] != host_net

    process = await jails.start(
        JailSpec(name=NAME, path=busybox_rootfs, command=["sleep", "30"], network_mode="host")
    )
    running = await jails.list_running()
    assert os.readlink(f"/proc/{running[NAME].jid}/ns/net") == host_net
    await jails.stop(NAME)
    await process.wait()


async def test_a_failing_before_command_hook_leaves_nothing(
    jails: LinuxJails, busybox_rootfs: Path
) -> None:
    async def broken(pid: int) -> None:
        raise RuntimeError("no veth for you")

    with pytest.raises(JailError, match="no veth for you"):
        await jails.start(
            JailSpec(name=NAME, path=busybox_rootfs, command=["echo", "ran"], network_mode="new"),
            before_command=broken,
        )
    assert await jails.list_running() == {}


# ------------------------------------------------------------------ users and environment


async def test_user_from_the_jails_passwd(jails: LinuxJails, busybox_rootfs: Path) -> None:
    output, code = await run(
        jails, busybox_rootfs, ["sh", "-c", "id -u; id -G; pwd; echo $HOME"], user="kleene"
    )
    uid, groups, cwd, home = output.decode().splitlines()
    assert code == 0
    assert int(uid) == TEST_UID
    assert str(TEST_SUPPLEMENTARY_GID) in groups.split()
    assert cwd == home == "/home/kleene"


async def test_a_user_without_a_home_starts_in_the_root(
    jails: LinuxJails, busybox_rootfs: Path
) -> None:
    output, code = await run(jails, busybox_rootfs, ["sh", "-c", "id -un; pwd"], user="nobody")
    assert (output, code) == (b"nobody\n/\n", 0)


async def test_an_unknown_user_is_a_clear_error(jails: LinuxJails, busybox_rootfs: Path) -> None:
    with pytest.raises(JailError, match="no such user 'mallory'"):
        await jails.start(
            JailSpec(name=NAME, path=busybox_rootfs, command=["true"], user="mallory")
        )
    assert await jails.list_running() == {}


async def test_clean_environment_plus_the_specs(jails: LinuxJails, busybox_rootfs: Path) -> None:
    os.environ["KLEENED_TEST_LEAK"] = "daemon"
    try:
        output, code = await run(
            jails, busybox_rootfs, ["/usr/bin/env"], env=["FOO=bar baz", "HOME=/tmp", "X=a=b"]
        )
    finally:
        del os.environ["KLEENED_TEST_LEAK"]
    assert code == 0
    assert sorted(output.decode().splitlines()) == sorted(
        [
            "HOME=/tmp",
            "SHELL=/bin/sh",
            "USER=root",
            "PATH=/sbin:/bin:/usr/sbin:/usr/bin:/usr/local/sbin:/usr/local/bin",
            "FOO=bar baz",
            "X=a=b",
        ]
    )


async def test_env_entries_are_not_on_any_command_line(
    jails: LinuxJails, busybox_rootfs: Path
) -> None:
    process = await jails.start(
        JailSpec(name=NAME, path=busybox_rootfs, command=["sleep", "30"], env=["TOKEN=s3cret"])
    )
    output, _ = await execute(jails, ["sh", "-c", "cat /proc/*/cmdline"])
    assert b"s3cret" not in output
    assert b"s3cret" not in Path(f"/proc/{process.pid}/cmdline").read_bytes()
    await jails.stop(NAME)
    await process.wait()


async def test_invalid_env_is_refused(jails: LinuxJails, busybox_rootfs: Path) -> None:
    with pytest.raises(JailError, match="invalid environment entry"):
        await jails.start(JailSpec(name=NAME, path=busybox_rootfs, command=["true"], env=["NOEQ"]))


# ------------------------------------------------------------------ exec


async def test_exec_joins_the_jail(jails: LinuxJails, busybox_rootfs: Path) -> None:
    first = await jails.start(JailSpec(name=NAME, path=busybox_rootfs, command=["sleep", "30"]))
    output, code = await execute(jails, ["sh", "-c", "hostname; ps -o pid,args"])
    lines = output.decode().splitlines()
    assert code == 0
    assert lines[0] == NAME
    assert any("sleep 30" in line for line in lines)
    assert not any("python" in line for line in lines)
    assert len(lines) == 5  # hostname, header, pid 1, sleep, and sh exec'd as ps
    output, code = await execute(jails, ["sh", "-c", "id -un; pwd"], user="kleene", workdir="/tmp")
    assert (output, code) == (b"kleene\n/tmp\n", 0)
    assert await execute(jails, ["sh", "-c", "exit 7"]) == (b"", 7)
    # the jail is untouched by the execs' ends
    assert await jails.is_running(NAME)
    assert first.returncode is None
    await jails.stop(NAME)
    assert await asyncio.wait_for(first.wait(), TIMEOUT) == 143


async def test_an_execd_process_keeps_the_jail_alive(
    jails: LinuxJails, busybox_rootfs: Path
) -> None:
    begin = time.monotonic()
    first = await jails.start(JailSpec(name=NAME, path=busybox_rootfs, command=["sleep", "0.3"]))
    execd = await jails.exec(ExecSpec(name=NAME, command=["sleep", "1.2"]))
    await asyncio.sleep(0.6)
    # the first command is done, but the exec'd one is not pid 1's child: the
    # reaper finds it in its /proc and keeps the jail up
    assert await jails.is_running(NAME)
    assert first.returncode == 0  # the first process is reported ended (jail(8))
    assert await asyncio.wait_for(execd.wait(), TIMEOUT) == 0
    await asyncio.wait_for(jails.wait_stopped(NAME), TIMEOUT)
    assert time.monotonic() - begin >= 1.1
    assert not await jails.is_running(NAME)


async def test_exec_errors(jails: LinuxJails, busybox_rootfs: Path) -> None:
    with pytest.raises(JailError, match="not running"):
        await jails.exec(ExecSpec(name=NAME, command=["true"]))
    process = await jails.start(JailSpec(name=NAME, path=busybox_rootfs, command=["sleep", "30"]))
    with pytest.raises(JailError, match="no such user 'mallory'"):
        await jails.exec(ExecSpec(name=NAME, command=["true"], user="mallory"))
    with pytest.raises(JailError, match="working directory"):
        await jails.exec(ExecSpec(name=NAME, command=["true"], workdir="/nope"))
    await jails.stop(NAME)
    await process.wait()


@pytest.mark.parametrize(("stop", "expected"), [("terminate", 143), ("kill", 137)])
async def test_stopping_an_exec_ends_its_command(
    jails: LinuxJails, busybox_rootfs: Path, stop: str, expected: int
) -> None:
    first = await jails.start(JailSpec(name=NAME, path=busybox_rootfs, command=["sleep", "30"]))
    process = await jails.exec(ExecSpec(name=NAME, command=["sleep", "31"]))
    getattr(process, stop)()
    assert await asyncio.wait_for(process.wait(), TIMEOUT) == expected

    async def gone() -> bool:
        output, _ = await execute(jails, ["ps", "-o", "args"])
        return b"sleep 31" not in output

    await until(gone)
    await jails.stop(NAME)
    await first.wait()


async def test_sigterm_to_the_first_process_detaches_it_like_jail8(
    jails: LinuxJails, busybox_rootfs: Path
) -> None:
    command = ["sh", "-c", "sleep 0.5; echo still here; sleep 30"]
    with subreaper():
        first = await jails.start(JailSpec(name=NAME, path=busybox_rootfs, command=command))
        stream = first.subscribe()
        first.terminate()
        assert await asyncio.wait_for(first.wait(), TIMEOUT) == 143
        assert await jails.is_running(NAME)
        # its output still flows: a copy of the monitor carries on relaying it
        assert await asyncio.wait_for(anext(stream), TIMEOUT) == b"still here\n"
        relays = adopted_helpers()
        await jails.stop(NAME)
        assert await collect_rest(stream) == b""
        for pid in relays:
            os.waitpid(pid, 0)


async def collect_rest(stream) -> bytes:
    out = b""
    async with asyncio.timeout(TIMEOUT):
        async for chunk in stream:
            out += chunk
    return out


# ------------------------------------------------------------------ tty


async def test_tty_in_a_jail(jails: LinuxJails, busybox_rootfs: Path) -> None:
    output, code = await run(jails, busybox_rootfs, ["sh", "-c", "tty; echo $TERM"], tty=True)
    assert re.fullmatch(rb"/dev/pts/\d+\nxterm\n", output), output
    assert code == 0


async def test_interactive_shell_in_a_jail(jails: LinuxJails, busybox_rootfs: Path) -> None:
    process = await jails.start(JailSpec(name=NAME, path=busybox_rootfs, command=["sh"], tty=True))
    stream = process.subscribe()
    await process.write(b"echo $((6 * 7)); pwd\n")
    seen = b""
    async with asyncio.timeout(TIMEOUT):
        while b"42" not in seen or b"/root" not in seen.split(b"42", 1)[-1]:
            seen += await anext(stream)
    await process.write(b"exit 4\n")
    seen += await collect_rest(stream)
    assert await asyncio.wait_for(process.wait(), TIMEOUT) == 4


async def test_exec_with_a_tty(jails: LinuxJails, busybox_rootfs: Path) -> None:
    first = await jails.start(JailSpec(name=NAME, path=busybox_rootfs, command=["sleep", "30"]))
    output, code = await execute(jails, ["tty"], tty=True)
    assert re.fullmatch(rb"/dev/pts/\d+\n", output), output
    assert code == 0
    process = await jails.exec(ExecSpec(name=NAME, command=["sh"], tty=True))
    stream = process.subscribe()
    await process.write(b"echo hi-$((1 + 1))\n")
    seen = b""
    async with asyncio.timeout(TIMEOUT):
        while b"hi-2" not in seen:
            seen += await anext(stream)
    await process.close_stdin()  # ^D ends the shell
    assert await asyncio.wait_for(process.wait(), TIMEOUT) == 0
    await jails.stop(NAME)
    await first.wait()


async def test_closing_the_jails_terminal_before_exit_is_not_a_hangup(
    jails: LinuxJails, busybox_rootfs: Path
) -> None:
    closer = ["sh", "-c", "echo bye; exec 0<&- 1>&- 2>&-; exit 0"]
    for _ in range(15):
        assert await run(jails, busybox_rootfs, closer, tty=True) == (b"bye\n", 0)
    first = await jails.start(JailSpec(name=NAME, path=busybox_rootfs, command=["sleep", "30"]))
    for _ in range(15):
        assert await execute(jails, closer, tty=True) == (b"bye\n", 0)
    await jails.stop(NAME)
    await first.wait()


# ------------------------------------------------------------------ stop


async def test_stop_ends_every_process(jails: LinuxJails, busybox_rootfs: Path) -> None:
    first = await jails.start(
        JailSpec(name=NAME, path=busybox_rootfs, command=["sh", "-c", "sleep 60 & sleep 61"])
    )
    execd = await jails.exec(ExecSpec(name=NAME, command=["sh", "-c", "sleep 62 & sleep 63"]))
    jail_pid = (await jails.list_running())[NAME].jid
    assert len(Path(f"/proc/{jail_pid}/task/{jail_pid}/children").read_text().split()) >= 1
    await jails.stop(NAME, timeout=5)
    assert not await jails.is_running(NAME)
    assert await asyncio.wait_for(first.wait(), TIMEOUT) == 143
    assert await asyncio.wait_for(execd.wait(), TIMEOUT) == 143
    assert (
        not Path(f"/proc/{jail_pid}").exists() or "Z" in Path(f"/proc/{jail_pid}/stat").read_text()
    )
    for word in ("sleep 60", "sleep 61", "sleep 62", "sleep 63"):
        assert not any(word in cmdline for cmdline in all_cmdlines())
    with pytest.raises(JailError, match="not running"):
        await jails.stop(NAME)


async def test_stop_kills_what_ignores_sigterm(jails: LinuxJails, busybox_rootfs: Path) -> None:
    first = await jails.start(
        JailSpec(
            name=NAME,
            path=busybox_rootfs,
            command=["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"],
        )
    )
    stream = first.subscribe()
    assert await asyncio.wait_for(anext(stream), TIMEOUT) == b"ready\n"
    begin = time.monotonic()
    await jails.stop(NAME, timeout=0.5)
    assert time.monotonic() - begin >= 0.5
    assert await asyncio.wait_for(first.wait(), TIMEOUT) == 137
    assert not await jails.is_running(NAME)


def all_cmdlines() -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                found.append(
                    Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                )
    return found


# ------------------------------------------------------------------ modify


async def test_modify_hostname_only(jails: LinuxJails, busybox_rootfs: Path) -> None:
    first = await jails.start(JailSpec(name=NAME, path=busybox_rootfs, command=["sleep", "30"]))
    await jails.modify(NAME, ["host.hostname=renamed"])
    assert await execute(jails, ["hostname"]) == (b"renamed\n", 0)
    assert (await jails.list_running())[NAME].extra["hostname"] == "renamed"
    with pytest.raises(JailError, match=r"'allow\.raw_sockets' cannot be changed on Linux"):
        await jails.modify(NAME, ["allow.raw_sockets=1"])
    await jails.stop(NAME)
    await first.wait()
    with pytest.raises(JailError, match="not running"):
        await jails.modify(NAME, ["host.hostname=x"])


# ------------------------------------------------------------------ mounts


async def test_a_read_only_bind_mount_refuses_writes(
    jails: LinuxJails, busybox_rootfs: Path, tmp_path: Path
) -> None:
    mounts = LinuxMounts()
    volume, shared = tmp_path / "volume", tmp_path / "shared"
    volume.mkdir()
    shared.mkdir()
    (volume / "data.txt").write_text("from the host\n")
    ro_target, rw_target = busybox_rootfs / "mnt/ro", busybox_rootfs / "mnt/rw"
    ro_target.mkdir(parents=True)
    rw_target.mkdir(parents=True)
    await mounts.mount_nullfs(volume, ro_target, read_only=True)
    await mounts.mount_nullfs(shared, rw_target)
    try:
        output, code = await run(
            jails,
            busybox_rootfs,
            ["sh", "-c", "cat /mnt/ro/data.txt; echo new > /mnt/rw/made; echo x > /mnt/ro/nope"],
        )
    finally:
        for target in await mounts.mounted_under(busybox_rootfs):
            await mounts.unmount(target)
    assert b"from the host" in output
    assert b"Read-only file system" in output
    assert code != 0
    assert (shared / "made").read_text() == "new\n"
    assert not (volume / "nope").exists()


# ------------------------------------------------------------------ surviving a daemon restart


async def test_a_new_instance_adopts_running_jails(
    jails: LinuxJails, busybox_rootfs: Path, tmp_path: Path, libexec_dir: Path
) -> None:
    first = await jails.start(JailSpec(name=NAME, path=busybox_rootfs, command=["sleep", "30"]))
    other = LinuxJails(state_dir=tmp_path / "jails", libexec_dir=libexec_dir)
    running = await other.list_running()
    assert list(running) == [NAME]
    assert running[NAME].path == busybox_rootfs.resolve()
    assert await execute(other, ["hostname"]) == (f"{NAME}\n".encode(), 0)
    await other.stop(NAME)
    assert not await jails.is_running(NAME)
    assert await asyncio.wait_for(first.wait(), TIMEOUT) == 143


STARTER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from kleened.host.base import JailSpec
    from kleened.host.linux.jail import LinuxJails

    async def main():
        jails = LinuxJails(state_dir=Path(sys.argv[1]), libexec_dir=Path(sys.argv[2]))
        command = ["sh", "-c", "while :; do echo tick; sleep 0.1; done"]
        await jails.start(JailSpec(name=sys.argv[3], path=Path(sys.argv[4]), command=command))
        print("started", flush=True)

    asyncio.run(main())
    """
)


async def test_a_jail_survives_the_daemon_that_started_it(
    jails: LinuxJails, busybox_rootfs: Path, tmp_path: Path, libexec_dir: Path
) -> None:
    with subreaper():
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                STARTER,
                str(tmp_path / "jails"),
                str(libexec_dir),
                NAME,
                str(busybox_rootfs),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == "started\n"
        # The starting process is gone; its pipe with it. The jail keeps printing
        # (into the void) without dying of SIGPIPE.
        await asyncio.sleep(0.5)
        adopter = LinuxJails(state_dir=tmp_path / "jails", libexec_dir=libexec_dir)
        running = await adopter.list_running()
        assert list(running) == [NAME]
        monitor = int(running[NAME].extra["monitor_pid"])
        output, code = await execute(adopter, ["ps", "-o", "args"])
        assert code == 0 and b"while :" in output
        await adopter.stop(NAME, timeout=5)
        assert await adopter.list_running() == {}
        # the orphaned monitor ended with the jail; reap it
        _, status = os.waitpid(monitor, 0)
        assert os.waitstatus_to_exitcode(status) == 143


# ------------------------------------------------------------------ refusals


async def test_start_refusals(jails: LinuxJails, busybox_rootfs: Path, tmp_path: Path) -> None:
    with pytest.raises(JailError, match="invalid jail name"):
        await jails.start(JailSpec(name="../x", path=busybox_rootfs, command=["true"]))
    with pytest.raises(JailError, match="not a directory"):
        await jails.start(JailSpec(name=NAME, path=tmp_path / "missing", command=["true"]))
    with pytest.raises(JailError, match="no command"):
        await jails.start(JailSpec(name=NAME, path=busybox_rootfs, command=[]))
    first = await jails.start(JailSpec(name=NAME, path=busybox_rootfs, command=["sleep", "30"]))
    with pytest.raises(JailError, match="already running"):
        await jails.start(JailSpec(name=NAME, path=busybox_rootfs, command=["true"]))
    await jails.stop(NAME)
    await first.wait()


# ------------------------------------------------------------------ the helper binary


def test_the_reaper_is_built_once_and_rebuilt_when_its_source_changes(tmp_path: Path) -> None:
    from kleened.host.linux import reaper

    binary = reaper.ensure_reaper_sync(tmp_path)
    assert binary == tmp_path / "kleened-reaper" and os.access(binary, os.X_OK)
    first = binary.stat().st_ino
    reaper._verified.clear()  # as a new daemon process would
    assert reaper.ensure_reaper_sync(tmp_path).stat().st_ino == first  # cached
    (tmp_path / "kleened-reaper.sha256").write_text("an older source")
    reaper._verified.clear()
    assert reaper.ensure_reaper_sync(tmp_path).stat().st_ino != first  # rebuilt
    assert (tmp_path / "kleened-reaper.sha256").read_text() == reaper.source_hash()
