"""rc.d/kleened: its syntax, its rc.subr contract, and what each command runs.

FreeBSD's /etc/rc.subr does not exist here, so the script is sourced under a
stub written below. The stub does what rc.subr does for the parts under test:
load_rc_config reads an rc.conf, run_rc_command puts `${name}_flags` (or
`$flags`) into `rc_flags`, runs `<command>_precmd`, then `<command>_cmd` or,
for `start`, prints the command line rc.subr would run,
`${command} ${rc_flags} ${command_args}`. `vars` prints the variables.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "rc.d" / "kleened"
RC_SUBR_LINE = ". /etc/rc.subr"

STUB_RC_SUBR = r"""
load_rc_config() { if [ -n "${STUB_RC_CONF}" ]; then . "${STUB_RC_CONF}"; fi; }
checkyesno() {
    eval _value=\$$1
    case "${_value}" in [Yy][Ee][Ss]|[Tt][Rr][Uu][Ee]|[Oo][Nn]|1) return 0 ;; esac
    return 1
}
warn() { echo "${name}: WARNING: $*" >&2; }
check_pidfile() { echo "${STUB_PID}"; }
run_rc_command() {
    rc_arg=$1
    if [ -n "${flags}" ]; then rc_flags=${flags}; else eval rc_flags=\$${name}_flags; fi
    rc_pid=${STUB_PID}
    if [ "${rc_arg}" = vars ]; then
        for _v in name rcvar desc pidfile procname command command_args command_interpreter \
            extra_commands kleened_enable kleened_config kleened_flags kleened_log \
            kleened_shutdown_timeout kleened_command; do
            eval echo "${_v}=\"\$${_v}\""
        done
        return 0
    fi
    eval _cmd=\$${rc_arg}_cmd _precmd=\$${rc_arg}_precmd
    if [ -n "${_precmd}" ]; then eval "${_precmd}" || return 1; fi
    if [ -n "${_cmd}" ]; then eval "${_cmd}"; return $?; fi
    case "${rc_arg}" in
    start) echo "START: ${command} ${rc_flags} ${command_args}" ;;
    *) echo "stub rc.subr: no ${rc_arg}" >&2; return 1 ;;
    esac
}
"""

SHELLS = [s for s in ("sh", "bash") if shutil.which(s)]  # sh is dash on Debian, ash-like


@pytest.fixture
def rc(tmp_path: Path):
    """Run the script under the stub: rc(shell, command, rc_conf=..., env=...)."""
    stub = tmp_path / "rc.subr"
    stub.write_text(STUB_RC_SUBR)
    text = SCRIPT.read_text()
    assert text.count(f"\n{RC_SUBR_LINE}\n") == 1
    script = tmp_path / "kleened"
    script.write_text(text.replace(f"\n{RC_SUBR_LINE}\n", f"\n. {stub}\n"))

    def run(
        shell: str, command: str, rc_conf: str = "", env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        conf = tmp_path / "rc.conf"
        conf.write_text(rc_conf)
        full_env = {"PATH": os.environ["PATH"], "STUB_RC_CONF": str(conf), **(env or {})}
        return subprocess.run(
            [shell, str(script), command], capture_output=True, text=True, env=full_env, timeout=60
        )

    return run


@pytest.fixture
def fake_kleened(tmp_path: Path):
    """A stand-in `kleened` that records its arguments and exits with $FAKE_EXIT."""
    program = tmp_path / "bin" / "kleened"
    program.parent.mkdir()
    log = tmp_path / "kleened.args"
    program.write_text(
        f'#!/bin/sh\necho "$*" >> {log}\necho "fake kleened $1"\nexit ${{FAKE_EXIT:-0}}\n'
    )
    program.chmod(0o755)
    return program, log


def variables(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert result.returncode == 0, result.stderr
    return dict(line.split("=", 1) for line in result.stdout.splitlines())


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_syntax(shell):
    if not shutil.which(shell):
        pytest.skip(f"no {shell}")
    done = subprocess.run([shell, "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def test_is_executable_with_an_rcorder_header():
    assert os.access(SCRIPT, os.X_OK)
    text = SCRIPT.read_text()
    assert text.startswith("#!/bin/sh\n")
    assert re.search(r"^# PROVIDE: kleened$", text, re.M)
    assert re.search(r"^# REQUIRE: LOGIN$", text, re.M)
    assert re.search(r"^# KEYWORD: shutdown$", text, re.M)
    assert text.rstrip().endswith('run_rc_command "$1"')


@pytest.mark.parametrize("shell", SHELLS)
def test_defaults(rc, shell):
    v = variables(rc(shell, "vars"))
    assert v["name"] == "kleened"
    assert v["rcvar"] == "kleened_enable"
    assert v["kleened_enable"] == "NO"
    assert v["kleened_config"] == "/usr/local/etc/kleened/kleened.yaml"
    assert v["kleened_flags"] == ""
    assert v["kleened_log"] == "/var/log/kleened.log"
    assert v["kleened_shutdown_timeout"] == "60"
    assert v["kleened_command"] == "/usr/local/bin/kleened"
    assert v["pidfile"] == "/var/run/kleened.pid"
    assert v["command"] == "/usr/sbin/daemon"
    assert v["procname"] == "/usr/local/bin/kleened"
    assert v["extra_commands"] == "init dryinit"


@pytest.mark.parametrize("shell", SHELLS)
def test_config_and_flags_reach_the_daemon_command_line(rc, shell, tmp_path):
    config = tmp_path / "my-kleened.yaml"
    config.write_text("log_level: debug\n")
    conf = (
        "kleened_enable=YES\n"
        f"kleened_config={config}\n"
        'kleened_flags="--extra one"\n'
        "kleened_log=/var/log/k.log\n"
    )
    result = rc(shell, "start", conf)
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert line.startswith("START: ")
    # rc.subr evals the line, so the words are what the shell splits it into
    assert shlex.split(line.removeprefix("START: ")) == [
        "/usr/sbin/daemon",
        "-f",
        "-H",
        "-o",
        "/var/log/k.log",
        "-p",
        "/var/run/kleened.pid",
        "-P",
        "/var/run/kleened.supervisor.pid",
        "/usr/local/bin/kleened",
        "serve",
        "--config",
        str(config),
        "--extra",
        "one",
    ]


@pytest.mark.parametrize("shell", SHELLS)
def test_flags_from_the_environment_go_to_kleened_too(rc, shell, tmp_path):
    config = tmp_path / "k.yaml"
    config.write_text("")
    result = rc(shell, "start", f"kleened_config={config}\n", env={"flags": "--debug"})
    words = shlex.split(result.stdout.removeprefix("START: "))
    assert words[0] == "/usr/sbin/daemon"
    assert words[-4:] == ["serve", "--config", str(config), "--debug"]


@pytest.mark.parametrize("shell", SHELLS)
def test_start_without_a_config_file_says_what_to_do(rc, shell, tmp_path):
    result = rc(shell, "start", f"kleened_config={tmp_path}/missing.yaml\n")
    assert result.returncode == 1
    assert "START" not in result.stdout
    assert (
        f"{tmp_path}/missing.yaml is missing: copy /usr/local/etc/kleened/kleened.yaml.sample"
        in (result.stderr)
    )


@pytest.mark.parametrize(
    ("shebang", "interpreter"),
    [
        ("#!/usr/local/bin/python3.11", "/usr/local/bin/python3.11"),
        ("#! /usr/bin/python3 -I", "/usr/bin/python3"),
        ("# not a shebang", ""),
    ],
)
def test_interpreter_comes_from_the_shebang(rc, tmp_path, shebang, interpreter):
    program = tmp_path / "kleened-script"
    program.write_text(f"{shebang}\nprint('hi')\n")
    v = variables(rc("sh", "vars", f"kleened_command={program}\n"))
    assert v["procname"] == str(program)
    assert v["command_interpreter"] == interpreter


@pytest.mark.parametrize("shell", SHELLS)
def test_status_pings_with_the_config(rc, shell, fake_kleened, tmp_path):
    program, log = fake_kleened
    conf = f"kleened_command={program}\nkleened_config=/etc/k.yaml\n"
    result = rc(shell, "status", conf)
    assert result.returncode == 0
    assert log.read_text() == "ping --config /etc/k.yaml\n"
    assert rc(shell, "status", conf, env={"FAKE_EXIT": "1"}).returncode == 1


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(
    ("command", "arguments", "lines_ok", "lines_failed"),
    [
        (
            "init",
            "init --config {config}",
            ["Initializing kleened host configuration...", "fake kleened init",
             "Host initialization completed successfully"],
            ["Initializing kleened host configuration...", "fake kleened init",
             "Host initialization failed"],
        ),
        (
            "dryinit",
            "init --dry-run --config {config}",
            ["Testing kleened host configuration...", "fake kleened init",
             "Host configuration test completed successfully"],
            ["Testing kleened host configuration...", "fake kleened init",
             "Host configuration test failed"],
        ),
    ],
)  # fmt: skip
def test_init_and_dryinit(
    rc, shell, fake_kleened, tmp_path, command, arguments, lines_ok, lines_failed
):
    program, log = fake_kleened
    config = tmp_path / "k.yaml"
    config.write_text("kleene_root: tank/k\n")
    conf = f"kleened_enable=YES\nkleened_command={program}\nkleened_config={config}\n"

    ok = rc(shell, command, conf)
    assert (ok.returncode, ok.stdout.splitlines()) == (0, lines_ok)
    failed = rc(shell, command, conf, env={"FAKE_EXIT": "1"})
    assert (failed.returncode, failed.stdout.splitlines()) == (1, lines_failed)
    assert log.read_text().splitlines() == [arguments.format(config=config)] * 2


@pytest.mark.parametrize("command", ["init", "dryinit"])
def test_init_without_a_config_file_does_not_run_kleened(rc, fake_kleened, tmp_path, command):
    program, log = fake_kleened
    result = rc("sh", command, f"kleened_command={program}\nkleened_config={tmp_path}/none.yaml\n")
    assert result.returncode == 1
    assert "is missing" in result.stderr
    assert not log.exists()


def _reaped(argv: list[str]) -> subprocess.Popen[bytes]:
    """A process whose exit is reaped at once, so `kill -0` stops seeing it."""
    process = subprocess.Popen(argv, start_new_session=True)
    threading.Thread(target=process.wait, daemon=True).start()
    return process


@pytest.mark.parametrize("shell", SHELLS)
def test_stop_sends_term_and_waits_for_the_daemon(rc, shell):
    daemon = _reaped(["sleep", "60"])
    started = time.monotonic()
    result = rc(shell, "stop", "kleened_shutdown_timeout=20\n", env={"STUB_PID": str(daemon.pid)})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Stopping kleened.\n"
    assert daemon.wait(5) == -signal.SIGTERM
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("shell", SHELLS)
def test_stop_gives_up_after_the_timeout(rc, shell):
    stubborn = _reaped(["sh", "-c", "trap '' TERM; while :; do sleep 0.2; done"])
    try:
        started = time.monotonic()
        result = rc(
            shell, "stop", "kleened_shutdown_timeout=1\n", env={"STUB_PID": str(stubborn.pid)}
        )
        elapsed = time.monotonic() - started
        assert result.returncode == 1
        assert f"(pid {stubborn.pid}) is still running after 1 seconds" in result.stderr
        assert 1 <= elapsed < 10
        assert stubborn.poll() is None
    finally:
        os.killpg(stubborn.pid, signal.SIGKILL)
        stubborn.wait(5)


def test_stop_when_not_running(rc):
    result = rc("sh", "stop", "", env={"STUB_PID": ""})
    assert result.returncode == 1
    assert result.stderr == "kleened not running? (check /var/run/kleened.pid).\n"
