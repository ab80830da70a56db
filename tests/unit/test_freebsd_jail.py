"""The FreeBSD jail driver: exact jail(8)/jexec(8)/jls(8) vectors (reference §8).

jail(8) does not exist on this machine, so the driver is checked where it
meets the OS: the argument vectors it builds, the jls output it parses, and
what `FreeBSDJails` hands to its runner and spawner (recorded by fakes that
stand in for the commands, not for any kleened code). The default runner is
platform-neutral and is exercised for real at the end.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from kleened.host.base import ExecSpec, JailError, Jails, JailSpec
from kleened.host.freebsd import runner as runner_module
from kleened.host.freebsd.jail import (
    FreeBSDJails,
    InvalidJailSpec,
    JailCommandError,
    default_params,
    given_param_names,
    jail_create_argv,
    jail_modify_argv,
    jail_remove_argv,
    jail_shutdown_argvs,
    jail_stop_argvs,
    jexec_argv,
    modify_failed,
)
from kleened.host.freebsd.jls import jls_check_argv, jls_list_argv, parse_jls
from kleened.host.freebsd.runner import (
    SAFE_PATH,
    CommandNotStarted,
    CommandTimeout,
    abnormal_exit,
)

DATA = Path(__file__).parent / "data"
CID = "3f2a9c1d7e4b"
ROOT = Path(f"/zroot/kleene/container/{CID}")
HOST_NET = ["ip4=inherit", "ip6=inherit"]


def jail_spec(**changes: object) -> JailSpec:
    """The reference §8.3 example: host driver, root, FOO=bar, /bin/sh /etc/rc."""
    values: dict = {
        "name": CID,
        "path": ROOT,
        "command": ["/bin/sh", "/etc/rc"],
        "user": "root",
        "env": ["FOO=bar"],
        "network_params": HOST_NET,
    }
    values.update(changes)
    return JailSpec(**values)


def expected_create(
    params: Sequence[str],
    *,
    network: Sequence[str] = HOST_NET,
    tail: Sequence[str] = ("FOO=bar", "/bin/sh", "/etc/rc"),
) -> list[str]:
    return [
        "/usr/sbin/jail",
        "-c",
        f"path={ROOT}",
        f"name={CID}",
        *network,
        *params,
        "command=/usr/bin/env",
        *tail,
    ]


DEFAULTS = [
    "mount.devfs=true",
    "exec.stop=/bin/sh /etc/rc.shutdown",
    "exec.clean=true",
    "exec.jail_user=root",
    f"host.hostname={CID}",
]


# --------------------------------------------------------------------------- jail -c


def test_reference_example_byte_for_byte_except_the_fixed_exec_stop_quoting():
    assert jail_create_argv(jail_spec()) == [
        "/usr/sbin/jail",
        "-c",
        "path=/zroot/kleene/container/3f2a9c1d7e4b",
        "name=3f2a9c1d7e4b",
        "ip4=inherit",
        "ip6=inherit",
        "mount.devfs=true",
        "exec.stop=/bin/sh /etc/rc.shutdown",
        "exec.clean=true",
        "exec.jail_user=root",
        "host.hostname=3f2a9c1d7e4b",
        "command=/usr/bin/env",
        "FOO=bar",
        "/bin/sh",
        "/etc/rc",
    ]


def test_exec_stop_is_one_argument_without_literal_quotes():
    argv = jail_create_argv(jail_spec())
    stop = [a for a in argv if a.startswith("exec.stop")]
    assert stop == ["exec.stop=/bin/sh /etc/rc.shutdown"]
    assert '"' not in stop[0]


def test_effective_user_becomes_exec_jail_user():
    argv = jail_create_argv(jail_spec(user="www"))
    assert argv == expected_create([*DEFAULTS[:3], "exec.jail_user=www", DEFAULTS[4]])


@pytest.mark.parametrize(
    ("user_params", "dropped"),
    [
        (["mount.devfs=false"], "mount.devfs=true"),
        (["mount.nodevfs"], "mount.devfs=true"),
        (["mount.devfs"], "mount.devfs=true"),
        (["exec.stop=/usr/local/bin/stop-app"], "exec.stop=/bin/sh /etc/rc.shutdown"),
        (["exec.stop="], "exec.stop=/bin/sh /etc/rc.shutdown"),
        (["exec.nostop"], "exec.stop=/bin/sh /etc/rc.shutdown"),
        (["exec.clean=false"], "exec.clean=true"),
        (["exec.noclean"], "exec.clean=true"),
        (["exec.jail_user=www"], "exec.jail_user=root"),
        (["host.hostname=web.example.org"], f"host.hostname={CID}"),
    ],
)
def test_a_user_parameter_replaces_its_default_and_follows_the_others(user_params, dropped):
    argv = jail_create_argv(jail_spec(jail_params=user_params))
    remaining = [d for d in DEFAULTS if d != dropped]
    assert len(remaining) == 4
    assert argv == expected_create([*remaining, *user_params])


def test_user_exec_jail_user_wins_over_the_effective_user():
    argv = jail_create_argv(jail_spec(user="root", jail_params=["exec.jail_user=www"]))
    assert [a for a in argv if a.startswith("exec.jail_user")] == ["exec.jail_user=www"]


def test_all_defaults_overridden_leaves_only_the_user_parameters():
    params = [
        "mount.nodevfs",
        "exec.nostop",
        "exec.noclean",
        "exec.jail_user=www",
        "host.hostname=h",
    ]
    assert jail_create_argv(jail_spec(jail_params=params)) == expected_create(params)


@pytest.mark.parametrize(
    "param",
    [
        "exec.cleanup_foo=1",  # a prefix of the name, not the name
        "mount.devfs_ruleset=4",  # the common real case the original got wrong
        "exec.stopper=1",
        "host.hostnamex=1",
        "exec.jail_username=x",
        "exec.system_jail_user",
        "mount.nodevfs_ruleset",  # no-form of another parameter
    ],
)
def test_parameters_sharing_a_prefix_do_not_suppress_defaults(param):
    argv = jail_create_argv(jail_spec(jail_params=[param]))
    assert argv == expected_create([*DEFAULTS, param])


def test_given_names_include_the_affirmative_spelling_of_no_forms():
    names = given_param_names(["exec.noclean", "allow.noraw_sockets", "nopersist", "ip4.addr=1"])
    assert {"exec.clean", "allow.raw_sockets", "persist", "ip4.addr"} <= names
    assert "exec.noclean" in names
    # "no" alone is not a prefix of anything
    assert given_param_names(["exec.no"]) == {"exec.no"}


def test_default_params_alone():
    assert default_params(jail_spec(jail_params=["exec.noclean"])) == [
        "mount.devfs=true",
        "exec.stop=/bin/sh /etc/rc.shutdown",
        "exec.jail_user=root",
        f"host.hostname={CID}",
    ]


NETWORKS = {
    "disabled": ["ip4=disable", "ip6=disable"],
    "host": ["ip4=inherit", "ip6=inherit"],
    "ipnet": [
        "exec.prestart=ifconfig kleene0 inet 10.13.37.2/32 alias",
        "ip4.addr=10.13.37.2",
        "exec.prestart=ifconfig kleene0 inet6 fdef:1111:5678::2/128 alias",
        "ip6.addr=fdef:1111:5678::2",
    ],
    "vnet": [
        "vnet",
        "vnet.interface=epair5b",
        "exec.prestart=ifconfig kleene0 addm epair5a",
        "exec.prestart=ifconfig epair5a up",
        "exec.start=ifconfig epair5b inet 10.13.37.2/24",
        "exec.start=route add -inet default 10.13.37.1",
    ],
}


@pytest.mark.parametrize("driver", sorted(NETWORKS))
def test_network_parameters_come_first_in_their_own_order(driver):
    network = NETWORKS[driver]
    user = ["allow.raw_sockets", "exec.start=echo started"]
    argv = jail_create_argv(jail_spec(network_params=network, jail_params=user))
    assert argv == expected_create([*DEFAULTS, *user], network=network)


def test_network_parameters_do_not_count_as_user_overrides():
    # Only the user's own entries suppress defaults (reference §8.2).
    argv = jail_create_argv(jail_spec(network_params=["host.hostname=net"]))
    assert f"host.hostname={CID}" in argv


def test_values_are_single_arguments_never_split():
    params = ['exec.start=/bin/sh -c "echo a  b"', "osrelease=14.1-RELEASE x", "allow.mount"]
    argv = jail_create_argv(jail_spec(jail_params=params))
    assert argv == expected_create([*DEFAULTS, *params])
    assert argv[-7:-4] == params


def test_env_entries_precede_the_command_and_may_hold_anything_after_the_name():
    env = ["A=1", "B=x=y", "C=", "_D=with space"]
    argv = jail_create_argv(jail_spec(env=env, command=["/usr/bin/printenv", "B"]))
    assert argv[-7:] == ["command=/usr/bin/env", *env, "/usr/bin/printenv", "B"]


def test_no_env_puts_the_command_right_after_env():
    argv = jail_create_argv(jail_spec(env=[], command=["/bin/echo", "-n", "x=y"]))
    # later words may look like options or assignments: env(1) only inspects
    # arguments before the program name
    assert argv[-4:] == ["command=/usr/bin/env", "/bin/echo", "-n", "x=y"]


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"jail_params": ["Allow.raw"]}, "the name must be lower-case"),
        ({"jail_params": ["allow raw=1"]}, "the name must be lower-case"),
        ({"jail_params": [".vnet"]}, "the name must be lower-case"),
        ({"jail_params": ["ip4..addr=1"]}, "the name must be lower-case"),
        ({"jail_params": ["-r"]}, "the name must be lower-case"),
        ({"jail_params": ["=x"]}, "the name must be lower-case"),
        ({"jail_params": ["command=/bin/sh"]}, "'command' is set by kleened"),
        ({"jail_params": ["path=/"]}, "'path' is set by kleened"),
        ({"jail_params": ["name=other"]}, "'name' is set by kleened"),
        ({"jail_params": ["jid=1"]}, "'jid' is set by kleened"),
        ({"network_params": ["command=/bin/sh"]}, "'command' is set by kleened"),
        ({"jail_params": ["exec.start=a\x00b"]}, "NUL"),
        ({"env": ["NOEQUALS"]}, "expected NAME=value"),
        ({"env": ["1A=b"]}, "expected NAME=value"),
        ({"env": ["A B=c"]}, "expected NAME=value"),
        ({"env": ["=c"]}, "expected NAME=value"),
        ({"command": []}, "no command given"),
        ({"command": ["A=b", "/bin/sh"]}, "containing '='"),
        ({"command": ["/opt/a=b/prog"]}, "containing '='"),
        ({"command": ["-i"]}, "starting with '-'"),
        ({"command": [""]}, "program name is empty"),
        ({"path": Path("zroot/kleene/container/x")}, "must be an absolute path"),
        ({"name": "123456789012"}, "invalid jail name"),
        ({"name": "-r"}, "invalid jail name"),
        ({"name": "a.b"}, "invalid jail name"),
        ({"name": ""}, "invalid jail name"),
        ({"user": ""}, "invalid user"),
    ],
)
def test_invalid_specs_are_refused_with_a_clear_error(changes, fragment):
    with pytest.raises(InvalidJailSpec) as caught:
        jail_create_argv(jail_spec(**changes))
    assert fragment in str(caught.value)
    # usable both as a host error and as a plain ValueError
    assert isinstance(caught.value, JailError)
    assert isinstance(caught.value, ValueError)


# --------------------------------------------------------------------------- jexec


def exec_spec(**changes: object) -> ExecSpec:
    values: dict = {"name": CID, "command": ["/bin/sh", "-c", "echo hi"], "env": ["FOO=bar"]}
    values.update(changes)
    return ExecSpec(**values)


def test_jexec_vector():
    assert jexec_argv(exec_spec()) == [
        "/usr/sbin/jexec",
        "-l",
        "-U",
        "root",
        CID,
        "/usr/bin/env",
        "FOO=bar",
        "/bin/sh",
        "-c",
        "echo hi",
    ]


def test_jexec_uses_the_given_user_and_no_env():
    assert jexec_argv(exec_spec(user="www", env=[], command=["/usr/bin/id"])) == [
        "/usr/sbin/jexec",
        "-l",
        "-U",
        "www",
        CID,
        "/usr/bin/env",
        "/usr/bin/id",
    ]


def test_jexec_workdir():
    argv = jexec_argv(exec_spec(workdir="/srv/app", command=["/bin/pwd"]))
    assert argv == [
        "/usr/sbin/jexec",
        "-l",
        "-d",
        "/srv/app",
        "-U",
        "root",
        CID,
        "/usr/bin/env",
        "FOO=bar",
        "/bin/pwd",
    ]


@pytest.mark.parametrize(
    "changes",
    [
        {"command": ["X=1"]},
        {"env": ["BROKEN"]},
        {"workdir": "relative"},
        {"name": "42"},
        {"user": ""},
    ],
)
def test_jexec_refuses_what_jail_c_refuses(changes):
    with pytest.raises(InvalidJailSpec):
        jexec_argv(exec_spec(**changes))


# --------------------------------------------------------------------------- stop, modify


def test_remove_vector():
    assert jail_remove_argv(CID) == ["/usr/sbin/jail", "-r", CID]


def test_stop_runs_rc_shutdown_before_removal_by_default():
    assert jail_stop_argvs(CID) == [
        ["/usr/sbin/jexec", CID, "/bin/sh", "/etc/rc.shutdown"],
        ["/usr/sbin/jail", "-r", CID],
    ]


@pytest.mark.parametrize("params", [["exec.nostop"], ["exec.stop="], ["exec.stop"]])
def test_disabled_exec_stop_skips_the_shutdown_step(params):
    assert jail_shutdown_argvs(CID, params) == []
    assert jail_stop_argvs(CID, params) == [["/usr/sbin/jail", "-r", CID]]


def test_a_users_exec_stop_runs_through_sh_like_jail8_would():
    params = ["exec.stop=/usr/local/bin/app stop", "exec.stop=sync; sync", "mount.nodevfs"]
    assert jail_shutdown_argvs(CID, params) == [
        ["/usr/sbin/jexec", CID, "/bin/sh", "-c", "/usr/local/bin/app stop"],
        ["/usr/sbin/jexec", CID, "/bin/sh", "-c", "sync; sync"],
    ]


def test_unrelated_parameters_keep_the_default_shutdown():
    assert jail_shutdown_argvs(CID, ["exec.stopper=1", "exec.noclean"]) == [
        ["/usr/sbin/jexec", CID, "/bin/sh", "/etc/rc.shutdown"]
    ]


def test_modify_vector():
    assert jail_modify_argv(CID, ["allow.raw_sockets=1", "ip4.addr=10.0.0.2,10.0.0.3"]) == [
        "/usr/sbin/jail",
        "-m",
        f"name={CID}",
        "allow.raw_sockets=1",
        "ip4.addr=10.0.0.2,10.0.0.3",
    ]


@pytest.mark.parametrize("param", ["name=other", "path=/", "Bad=1", "command=x"])
def test_modify_refuses_bad_or_reserved_parameters(param):
    with pytest.raises(InvalidJailSpec):
        jail_modify_argv(CID, [param])


def test_modify_failure_message_matches_the_reference_once_prefixed():
    message = modify_failed(1, "jail: unknown parameter: foo\n")
    # the engine wraps it exactly like this (reference §3.4)
    assert f"an error ocurred while updating the container: {message}" == (
        "an error ocurred while updating the container: '/usr/sbin/jail' returned "
        "non-zero exitcode 1 when attempting to modify the container "
        "'jail: unknown parameter: foo\n'"
    )


# --------------------------------------------------------------------------- jls


def test_jls_vectors():
    assert jls_list_argv() == ["/usr/sbin/jls", "-v", "--libxo", "json"]
    assert jls_check_argv(CID) == ["/usr/sbin/jls", "--libxo", "json", "-j", CID]


def test_parse_jls_without_jails():
    assert parse_jls((DATA / "jls_none.json").read_text()) == {}
    # libxo may leave an empty list out altogether
    assert parse_jls('{"__version": "2", "jail-information": {}}\n') == {}


def test_parse_jls_one_jail():
    jails = parse_jls((DATA / "jls_one.json").read_text())
    assert list(jails) == [CID]
    jail = jails[CID]
    assert (jail.name, jail.jid, jail.path) == (CID, 7, ROOT)
    assert jail.extra == {"hostname": CID, "state": "ACTIVE", "cpusetid": "9"}


def test_parse_jls_several_jails():
    jails = parse_jls((DATA / "jls_several.json").read_text())
    assert sorted(jails) == ["0d9e8f7a6b5c", "14", "a1b2c3d4e5f6", "webserver"]
    assert {name: j.jid for name, j in jails.items()} == {
        "webserver": 3,
        "a1b2c3d4e5f6": 12,
        "0d9e8f7a6b5c": 13,
        "14": 14,
    }
    ipnet = jails["a1b2c3d4e5f6"]
    assert ipnet.path == Path("/zroot/kleene/container/a1b2c3d4e5f6")
    assert ipnet.extra["ipv4_addrs"] == "10.13.37.2,10.13.38.2"
    assert ipnet.extra["ipv6_addrs"] == "fdef:1111:5678::2"
    assert jails["webserver"].extra["ipv6_addrs"] == ""
    assert "ipv4_addrs" not in jails["0d9e8f7a6b5c"].extra


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ((DATA / "jls_truncated.json").read_text(), "not JSON"),
        ("", "not JSON"),
        ("jls: unknown parameter: -v\n", "not JSON"),
        ("[]", "top level is not an object"),
        ('{"jail-information": []}', "'jail-information' is not an object"),
        ('{"jail-information": {"jail": {"jid": 1}}}', "is not a list"),
        ('{"jail-information": {"jail": ["x"]}}', "not an object"),
        ('{"jail-information": {"jail": [{"name": "a"}]}}', "has no jid"),
        ('{"jail-information": {"jail": [{"jid": "one", "name": "a"}]}}', "invalid jid"),
        ('{"jail-information": {"jail": [{"jid": true, "name": "a"}]}}', "invalid jid"),
        ('{"jail-information": {"jail": [{"jid": 1, "name": 5}]}}', "invalid name"),
    ],
)
def test_parse_jls_malformed_output_is_a_clear_jail_error(text, fragment):
    with pytest.raises(JailError) as caught:
        parse_jls(text)
    assert "could not parse the output of /usr/sbin/jls" in str(caught.value)
    assert fragment in str(caught.value)


# --------------------------------------------------------------------------- the driver


class ScriptedRunner:
    """Stands in for the commands: answers calls in order, records argv and timeout."""

    def __init__(self, *answers: tuple[int, str] | BaseException) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[list[str], float]] = []

    async def __call__(self, argv: Sequence[str], *, timeout: float) -> tuple[int, str]:
        self.calls.append((list(argv), timeout))
        assert self.answers, f"unexpected command {argv}"
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    @property
    def argvs(self) -> list[list[str]]:
        return [argv for argv, _ in self.calls]


class RecordingSpawner:
    def __init__(self, error: BaseException | None = None) -> None:
        self.calls: list[dict] = []
        self.error = error
        self.process = object()  # only its identity is checked

    async def __call__(self, argv, *, tty, env, stdin_eof):
        self.calls.append(
            {"argv": list(argv), "tty": tty, "env": dict(env), "stdin_eof": stdin_eof}
        )
        if self.error is not None:
            raise self.error
        return self.process


def test_the_driver_satisfies_the_protocol():
    assert isinstance(FreeBSDJails(), Jails)


@pytest.mark.parametrize(("tty", "term"), [(False, "dumb"), (True, "xterm")])
async def test_start_spawns_jail_c_with_a_minimal_env_and_the_tty_flag(tty, term):
    spawner = RecordingSpawner()
    jails = FreeBSDJails(run=ScriptedRunner(), spawn=spawner)
    process = await jails.start(jail_spec(tty=tty, stdin_eof=True))
    assert process is spawner.process
    assert spawner.calls == [
        {
            "argv": expected_create(DEFAULTS),
            "tty": tty,
            "env": {"PATH": SAFE_PATH, "TERM": term},
            "stdin_eof": True,
        }
    ]


async def test_start_refuses_an_invalid_spec_before_spawning():
    spawner = RecordingSpawner()
    with pytest.raises(InvalidJailSpec):
        await FreeBSDJails(spawn=spawner).start(jail_spec(env=["BROKEN"]))
    assert spawner.calls == []


async def test_start_turns_a_spawn_failure_into_a_jail_error():
    spawner = RecordingSpawner(error=FileNotFoundError(2, "No such file or directory"))
    with pytest.raises(JailError, match=r"could not start /usr/sbin/jail: .*No such file"):
        await FreeBSDJails(spawn=spawner).start(jail_spec())


async def test_exec_spawns_jexec():
    spawner = RecordingSpawner()
    await FreeBSDJails(spawn=spawner).exec(exec_spec(tty=True, user="www"))
    assert spawner.calls == [
        {
            "argv": jexec_argv(exec_spec(user="www")),
            "tty": True,
            "env": {"PATH": SAFE_PATH, "TERM": "xterm"},
            "stdin_eof": False,
        }
    ]
    assert spawner.calls[0]["argv"][:5] == ["/usr/sbin/jexec", "-l", "-U", "www", CID]


async def test_stop_runs_rc_shutdown_then_jail_r_with_their_timeouts():
    run = ScriptedRunner((0, "Stopping cron.\n"), (0, ""))
    await FreeBSDJails(run=run, remove_timeout=25.0).stop(CID, timeout=3.0)
    assert run.argvs == [
        ["/usr/sbin/jexec", CID, "/bin/sh", "/etc/rc.shutdown"],
        ["/usr/sbin/jail", "-r", CID],
    ]
    (_, shutdown_timeout), (_, remove_timeout) = run.calls
    assert 0 < shutdown_timeout <= 3.0
    assert remove_timeout == 25.0


async def test_stop_uses_the_parameters_the_jail_was_started_with():
    run = ScriptedRunner((0, ""), (0, ""))
    jails = FreeBSDJails(run=run, spawn=RecordingSpawner())
    await jails.start(jail_spec(jail_params=["exec.stop=/usr/local/bin/app stop"]))
    await jails.stop(CID)
    assert run.argvs[0] == ["/usr/sbin/jexec", CID, "/bin/sh", "-c", "/usr/local/bin/app stop"]


async def test_stop_skips_the_shutdown_step_when_exec_stop_was_disabled():
    run = ScriptedRunner((0, ""))
    jails = FreeBSDJails(run=run, spawn=RecordingSpawner())
    await jails.start(jail_spec(jail_params=["exec.nostop"]))
    await jails.stop(CID)
    assert run.argvs == [["/usr/sbin/jail", "-r", CID]]


async def test_explicit_parameters_override_what_stop_remembers():
    run = ScriptedRunner((0, ""))
    jails = FreeBSDJails(run=run, spawn=RecordingSpawner())
    await jails.start(jail_spec())  # would default to rc.shutdown
    await jails.stop(CID, jail_params=["exec.nostop"])
    assert run.argvs == [["/usr/sbin/jail", "-r", CID]]


@pytest.mark.parametrize(
    "failure",
    [
        (127, "jexec: execvp: /bin/sh: No such file or directory\n"),
        (1, "/etc/rc.shutdown: not found\n"),
        CommandTimeout("/usr/sbin/jexec did not finish within 3 s"),
        CommandNotStarted("could not run /usr/sbin/jexec: No such file or directory"),
    ],
)
async def test_a_failing_shutdown_step_does_not_prevent_removal(failure):
    run = ScriptedRunner(failure, (0, ""))
    await FreeBSDJails(run=run).stop(CID, timeout=3.0)
    assert run.argvs[-1] == ["/usr/sbin/jail", "-r", CID]


async def test_no_time_left_skips_the_shutdown_step():
    run = ScriptedRunner((0, ""))
    await FreeBSDJails(run=run).stop(CID, timeout=0.0)
    assert run.argvs == [["/usr/sbin/jail", "-r", CID]]


async def test_stop_of_a_missing_jail_carries_jail8s_exit_code_and_output():
    output = f'jail: "{CID}" not found\n'
    run = ScriptedRunner((1, f'jexec: jail "{CID}" not found\n'), (1, output))
    with pytest.raises(JailCommandError) as caught:
        await FreeBSDJails(run=run).stop(CID)
    assert str(caught.value) == f"/usr/sbin/jail exited abnormally with exit code 1: '{output}'"
    assert (caught.value.returncode, caught.value.output) == (1, output)
    assert caught.value.argv == ["/usr/sbin/jail", "-r", CID]


async def test_jail_r_timing_out_is_a_jail_error():
    run = ScriptedRunner((0, ""), CommandTimeout("/usr/sbin/jail did not finish within 30 s"))
    with pytest.raises(JailError, match="did not finish within 30 s"):
        await FreeBSDJails(run=run).stop(CID)


async def test_modify_runs_jail_m():
    run = ScriptedRunner((0, ""))
    await FreeBSDJails(run=run).modify(CID, ["allow.raw_sockets=1"])
    assert run.argvs == [["/usr/sbin/jail", "-m", f"name={CID}", "allow.raw_sockets=1"]]


async def test_modify_failure_keeps_exit_code_and_output_for_the_engine():
    output = "jail: allow.nonsense: unknown parameter\n"
    run = ScriptedRunner((1, output))
    with pytest.raises(JailCommandError) as caught:
        await FreeBSDJails(run=run).modify(CID, ["allow.nonsense=1"])
    assert str(caught.value) == (
        "'/usr/sbin/jail' returned non-zero exitcode 1 when attempting to modify "
        f"the container '{output}'"
    )
    assert (caught.value.returncode, caught.value.output) == (1, output)


@pytest.mark.parametrize(("code", "running"), [(0, True), (1, False)])
async def test_is_running_reads_the_exit_status_of_jls_j(code, running):
    run = ScriptedRunner((code, ""))
    assert await FreeBSDJails(run=run).is_running(CID) is running
    assert run.argvs == [["/usr/sbin/jls", "--libxo", "json", "-j", CID]]


async def test_is_running_treats_other_failures_as_errors():
    run = ScriptedRunner((70, "jls: sysctl: Operation not permitted\n"))
    with pytest.raises(JailCommandError, match="exit code 70: 'jls: sysctl"):
        await FreeBSDJails(run=run).is_running(CID)


async def test_list_running_parses_jls_v():
    run = ScriptedRunner((0, (DATA / "jls_several.json").read_text()))
    jails = await FreeBSDJails(run=run).list_running()
    assert run.argvs == [["/usr/sbin/jls", "-v", "--libxo", "json"]]
    assert jails["a1b2c3d4e5f6"].jid == 12


async def test_list_running_errors():
    with pytest.raises(JailCommandError, match="/usr/sbin/jls exited abnormally"):
        await FreeBSDJails(run=ScriptedRunner((1, "jls: boom\n"))).list_running()
    with pytest.raises(JailError, match="could not parse"):
        await FreeBSDJails(run=ScriptedRunner((0, "{"))).list_running()


async def test_wait_stopped_polls_until_the_jail_is_gone_riding_out_errors():
    run = ScriptedRunner((0, ""), CommandTimeout("slow"), (0, ""), (1, ""))
    await asyncio.wait_for(FreeBSDJails(run=run, poll_interval=0.001).wait_stopped(CID), 5)
    assert len(run.calls) == 4
    assert all(argv == jls_check_argv(CID) for argv in run.argvs)


# --------------------------------------------------------------------------- the real runner


async def test_runner_merges_stderr_and_returns_the_exit_code():
    code, output = await runner_module.run(
        ["/bin/sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10
    )
    assert (code, output) == (3, "out\nerr\n")


async def test_runner_gives_children_only_the_minimal_environment(monkeypatch):
    monkeypatch.setenv("KLEENED_SECRET", "leak")
    code, output = await runner_module.run(["/usr/bin/env"], timeout=10)
    assert (code, output) == (0, f"PATH={SAFE_PATH}\n")


async def test_runner_reports_death_by_signal_as_128_plus_n():
    code, _ = await runner_module.run(["/bin/sh", "-c", "kill -TERM $$"], timeout=10)
    assert code == 128 + signal.SIGTERM


async def test_runner_refuses_a_missing_program():
    with pytest.raises(CommandNotStarted, match="could not run /nonexistent/prog"):
        await runner_module.run(["/nonexistent/prog"], timeout=10)


def _gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False


async def test_runner_timeout_kills_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match=r"did not finish within 0\.3 s"):
        await runner_module.run(
            ["/bin/sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], timeout=0.3
        )
    assert time.monotonic() - started < 5
    assert _gone(int(pidfile.read_text()))


async def test_cancelling_the_runner_kills_the_command(tmp_path):
    pidfile = tmp_path / "pid"
    task = asyncio.create_task(
        runner_module.run(["/bin/sh", "-c", f"echo $$ > {pidfile}; exec sleep 60"], timeout=60)
    )
    for _ in range(200):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _gone(int(pidfile.read_text()))


def test_abnormal_exit_wording():
    assert abnormal_exit("/usr/sbin/jail", 2, "x\n") == (
        "/usr/sbin/jail exited abnormally with exit code 2: 'x\n'"
    )
