"""host.process: real children, real pipes and ptys, no mocks."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

import pytest

from kleened.host.base import HostError, Process
from kleened.host.process import READ_SIZE, SpawnedProcess, spawn

TIMEOUT = 20.0


async def collect(stream) -> bytes:
    out = b""
    async with asyncio.timeout(TIMEOUT):
        async for chunk in stream:
            out += chunk
    return out


async def run(argv: list[str], **kwargs) -> tuple[bytes, int, SpawnedProcess]:
    proc = await spawn(argv, **kwargs)
    output = await collect(proc.subscribe())
    code = await asyncio.wait_for(proc.wait(), TIMEOUT)
    return output, code, proc


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def test_is_a_process() -> None:
    output, code, proc = await run(["true"])
    assert isinstance(proc, Process)
    assert (output, code, proc.returncode) == (b"", 0, 0)


async def test_output_streams_in_order_as_it_is_produced() -> None:
    proc = await spawn(["sh", "-c", "echo one; sleep 0.3; echo two"])
    stream = proc.subscribe()
    first = await asyncio.wait_for(anext(stream), TIMEOUT)
    assert first == b"one\n"
    assert proc.returncode is None  # the first line arrived while it was still running
    assert await collect(stream) == b"two\n"
    assert await proc.wait() == 0


async def test_stdout_and_stderr_are_merged() -> None:
    output, code, _ = await run(["sh", "-c", "echo out; echo err >&2; echo out2"])
    assert output == b"out\nerr\nout2\n"
    assert code == 0


async def test_a_slow_subscriber_holds_the_process_and_loses_nothing() -> None:
    limit = 256 * 1024
    size = 8 * 1024 * 1024
    proc = await spawn(["head", "-c", str(size), "/dev/urandom"], buffer_limit=limit)
    slow, fast = proc.subscribe(), proc.subscribe()
    await asyncio.sleep(0.5)
    # nobody read `slow`: reading stopped at the limit and the writer waits
    assert proc.returncode is None
    assert slow._size <= limit + READ_SIZE
    out_slow, out_fast = await asyncio.gather(collect(slow), collect(fast))
    assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
    assert len(out_slow) == size and out_slow == out_fast
    assert slow.dropped == 0


async def test_a_closed_or_dropped_subscriber_no_longer_holds_the_process() -> None:
    limit = 64 * 1024
    size = 4 * 1024 * 1024
    proc = await spawn(["head", "-c", str(size), "/dev/zero"], buffer_limit=limit)
    stalled = proc.subscribe()
    await asyncio.sleep(0.3)
    assert proc.returncode is None
    await stalled.aclose()
    assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0

    proc = await spawn(["head", "-c", str(size), "/dev/zero"], buffer_limit=limit)
    dropped = proc.subscribe()
    await asyncio.sleep(0.3)
    assert proc.returncode is None
    del dropped
    assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0


async def test_output_nobody_attached_to_is_bounded_and_never_holds_the_process() -> None:
    limit = 64 * 1024
    proc = await spawn(["head", "-c", str(4 * 1024 * 1024), "/dev/zero"], buffer_limit=limit)
    assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
    kept = await collect(proc.subscribe())  # the newest bytes, within the bound
    assert 0 < len(kept) <= limit


async def test_a_late_subscriber_gets_output_from_then_on() -> None:
    proc = await spawn(["sh", "-c", "echo one; read x; echo two"])
    first = proc.subscribe()
    assert await asyncio.wait_for(anext(first), TIMEOUT) == b"one\n"
    late = proc.subscribe()
    await proc.write(b"go\n")
    assert await collect(late) == b"two\n"
    assert await collect(first) == b"two\n"
    assert await proc.wait() == 0


async def test_output_before_the_first_subscriber_is_kept_for_it() -> None:
    proc = await spawn(["echo", "hi"])
    assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
    await asyncio.sleep(0.1)  # the output has surely been read by now
    assert await collect(proc.subscribe()) == b"hi\n"
    assert await collect(proc.subscribe()) == b""  # later ones: from then on


async def test_stdin_round_trip_and_close() -> None:
    proc = await spawn(["cat"])
    stream = proc.subscribe()
    await proc.write(b"hello ")
    await proc.write(b"world\n")
    await proc.close_stdin()
    assert await collect(stream) == b"hello world\n"
    assert await proc.wait() == 0


async def test_large_stdin_does_not_block_the_loop() -> None:
    data = os.urandom(2 * 1024 * 1024)
    proc = await spawn(["cat"])
    stream = proc.subscribe()
    reader = asyncio.create_task(collect(stream))
    await proc.write(data)
    await proc.close_stdin()
    assert await reader == data


async def test_binary_and_invalid_utf8_pass_through_intact() -> None:
    data = bytes(range(256)) + b"\xff\xfe\xc3\x28 \xe2\x82" * 100
    proc = await spawn(["cat"])
    stream = proc.subscribe()
    await proc.write(data)
    await proc.close_stdin()
    assert await collect(stream) == data


async def test_stdin_eof() -> None:
    output, code, _ = await run(["cat"], stdin_eof=True)
    assert (output, code) == (b"", 0)


async def test_exit_codes() -> None:
    for status in (0, 1, 3, 255):
        _, code, _ = await run(["sh", "-c", f"exit {status}"])
        assert code == status


@pytest.mark.parametrize(
    ("action", "expected"),
    [("kill", 137), ("terminate", 143), (signal.SIGINT, 130)],
)
async def test_a_signalled_process_reports_128_plus_signal(action, expected) -> None:
    proc = await spawn(["sleep", "30"])
    if isinstance(action, str):
        getattr(proc, action)()
    else:
        proc.send_signal(action)
    assert await asyncio.wait_for(proc.wait(), TIMEOUT) == expected
    assert proc.returncode == expected
    proc.kill()  # after the end: a no-op, never a stranger's pid


async def test_output_ends_soon_after_exit_when_a_background_process_holds_it() -> None:
    # the background sleep keeps the pipe open; the output still ends with the
    # command (jail(8)/jexec callers see the command end when it ends)
    proc = await spawn(["sh", "-c", "sleep 30 & echo $!"])
    output = await collect(proc.subscribe())
    assert await proc.wait() == 0
    background = int(output)
    assert Path(f"/proc/{background}").exists()  # it still holds the pipe
    os.kill(background, signal.SIGKILL)


async def test_a_background_writer_cannot_hold_the_output_forever() -> None:
    proc = await spawn(["sh", "-c", "yes & exit 0"])
    output = await collect(proc.subscribe())  # bounded by LINGER_MAX, not by `yes`
    assert output.startswith(b"y\ny\n")
    assert await proc.wait() == 0
    await asyncio.sleep(0.2)  # `yes` dies of SIGPIPE once the pipe is closed


async def test_without_linger_the_output_lasts_until_eof() -> None:
    proc = await spawn(["sh", "-c", "(sleep 0.6; echo late) & echo early"], linger=False)
    assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
    assert await collect(proc.subscribe()) == b"early\nlate\n"


async def test_writes_after_the_end_are_ignored() -> None:
    proc = await spawn(["true"])
    await proc.wait()
    await proc.write(b"ignored\n")
    await proc.close_stdin()


async def test_env_and_cwd(tmp_path: Path) -> None:
    output, code, _ = await run(
        ["sh", "-c", 'echo "$FOO"; pwd'], env={"FOO": "bar", "PATH": "/usr/bin:/bin"}, cwd=tmp_path
    )
    assert output.decode().splitlines() == ["bar", str(tmp_path)]
    assert code == 0


async def test_a_missing_program_is_a_host_error() -> None:
    with pytest.raises(HostError):
        await spawn(["/nonexistent/program"])


async def test_tty_gives_a_terminal() -> None:
    output, code, _ = await run(["tty"], tty=True)
    assert re.fullmatch(rb"/dev/pts/\d+\n", output), output
    assert code == 0


async def test_tty_output_keeps_plain_newlines() -> None:
    # ONLCR is off, as kleened_pty did: "\n" is not turned into "\r\n"
    output, _, _ = await run(["printf", "a\\nb\\n"], tty=True)
    assert output == b"a\nb\n"


async def test_tty_is_the_controlling_terminal_of_a_new_session() -> None:
    output, code, proc = await run(
        ["sh", "-c", "cat /proc/self/stat; test -t 0 && echo stdin-is-a-tty"], tty=True
    )
    fields = output.split(b")")[1].split()
    # session id (field 6) is the shell's own pid; tty_nr (field 7) is set
    assert int(fields[3]) == proc.pid
    assert int(fields[4]) != 0
    assert b"stdin-is-a-tty" in output
    assert code == 0


async def test_interactive_shell_over_a_tty() -> None:
    proc = await spawn(["sh", "-i"], tty=True, env={"PATH": "/usr/bin:/bin", "PS1": "$ "})
    stream = proc.subscribe()
    await proc.write(b"echo $((6 * 7))\n")
    await proc.write(b"exit 5\n")
    output = await collect(stream)
    assert b"42\n" in output.replace(b"\r\n", b"\n")
    assert await proc.wait() == 5


async def test_tty_close_stdin_sends_eof() -> None:
    proc = await spawn(["cat"], tty=True)
    stream = proc.subscribe()
    await proc.write(b"abc\n")
    await proc.close_stdin()
    output = await collect(stream)
    assert output.count(b"abc") == 2  # the terminal's echo and cat's copy
    assert await proc.wait() == 0


async def test_closing_the_terminal_before_exit_is_not_a_hangup() -> None:
    # The output ends (EIO) before the exit; closing the master right then would
    # SIGHUP the program and turn its status 0 into 129.
    for _ in range(30):
        output, code, _ = await run(["sh", "-c", "echo bye; exec 0<&- 1>&- 2>&-; exit 0"], tty=True)
        assert (output, code) == (b"bye\n", 0)


async def test_no_fds_or_zombies_are_left_behind() -> None:
    await run(["true"])  # warm up whatever the loop opens once
    before = open_fds()
    pids = []
    for tty in (False, True, False, True):
        _, _, proc = await run(["sh", "-c", "echo x"], tty=tty)
        pids.append(proc.pid)
    proc = await spawn(["sleep", "30"])
    proc.kill()
    await proc.wait()
    await collect(proc.subscribe())
    pids.append(proc.pid)
    assert open_fds() == before
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"{pid} was not reaped"
