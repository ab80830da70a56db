"""FreeBSD jails through jail(8), jexec(8) and jls(8) (reference §8).

Two layers:

* pure functions that turn a `JailSpec`/`ExecSpec` into the exact argument
  vector the original daemon used (with its documented defects fixed), and
  that validate everything that goes into those vectors;
* `FreeBSDJails`, the `Jails` Protocol on top of an injectable command runner
  (`runner.run`) and process spawner (`kleened.host.process.spawn`).

Decisions, each also explained where it is implemented:

* `exec.stop` is passed as `exec.stop=/bin/sh /etc/rc.shutdown`, without the
  original's literal double quotes (reference §14.3.1).
* Whether the user gave a parameter is decided from the parameter *name*,
  including the `no`-prefixed boolean spelling, never by string prefix
  (reference §14.3.2): `mount.devfs_ruleset=4` does not suppress
  `mount.devfs=true`, `mount.nodevfs` does.
* env(1) is given `NAME=value` entries and then the command, exactly like the
  original. FreeBSD's env(1) stops option parsing at the first `NAME=value`
  and then takes *every* leading argument containing `=` as an assignment,
  also after a `--`, so `--` cannot protect a command whose first word contains
  `=`. Such commands (and a first word starting with `-`, which env(1) would
  read as an option when there are no env entries) are refused with a clear
  error instead of being silently misread (reference §8.3, §14.3.7).
* rc.shutdown is run explicitly with jexec before `jail -r`, because a bare
  `jail -r <id>` does not know creation-time pseudo-parameters such as
  `exec.stop` (reference §6.5, §14.3.1).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Protocol

from kleened.host.base import (
    BeforeCommand,
    ExecSpec,
    HostError,
    JailError,
    JailSpec,
    Process,
    RunningJail,
)
from kleened.host.freebsd import runner as runner_module
from kleened.host.freebsd.jls import jls_check_argv, jls_list_argv, parse_jls
from kleened.host.freebsd.runner import (
    DEFAULT_TIMEOUT,
    SAFE_PATH,
    CommandError,
    Runner,
    abnormal_exit,
)

log = logging.getLogger("kleened.host.freebsd.jail")

JAIL = "/usr/sbin/jail"
JEXEC = "/usr/sbin/jexec"
ENV = "/usr/bin/env"
# rc.shutdown as the default exec.stop command, split into argv form. jail(8)
# runs an exec.* string without shell metacharacters by splitting it on
# whitespace, which gives exactly this vector.
DEFAULT_STOP_ARGV = ("/bin/sh", "/etc/rc.shutdown")
DEFAULT_STOP_COMMAND = " ".join(DEFAULT_STOP_ARGV)
# jail -r sends TERM, waits jail(8)'s stop.timeout (10 s by default) and then
# KILLs; this bounds the whole call with room to spare.
REMOVE_TIMEOUT = 30.0

# Jail parameter names: lower-case dotted words, as in jail(8) (`ip4.addr`,
# `allow.mount.nullfs`, `enforce_statfs`). Nothing else reaches jail(8).
PARAM_NAME = re.compile(r"^[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*$")
# Parameters kleened sets itself. `command=` would make every later argument
# part of the jail's command, `path=`/`name=` would point the container at
# another root or another jail, `jid=` could collide with an existing jail.
RESERVED_PARAMS = frozenset({"command", "path", "name", "jid"})
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Container ids are 12 hex digits (reference §8.1); a jail name must not look
# like an option, contain `.` (jail hierarchy separator) or be all digits
# (jexec/jls would take it for a jid).
JAIL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,254}$")


class InvalidJailSpec(JailError, ValueError):
    """A jail name, parameter, user, env entry or command was refused before running."""


class JailCommandError(JailError):
    """A jail(8)/jexec(8)/jls(8) command exited non-zero.

    `str(err)` is the message the original produced for that operation;
    `returncode` and `output` (stdout and stderr merged, verbatim) let callers
    word it themselves.
    """

    def __init__(self, message: str, *, argv: Sequence[str], returncode: int, output: str):
        super().__init__(message)
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output


# --------------------------------------------------------------------------- validation


def _no_nul(value: str, what: str) -> None:
    if "\x00" in value:
        raise InvalidJailSpec(f"invalid {what} {value!r}: contains a NUL character")


def check_jail_name(name: str) -> None:
    if not JAIL_NAME.match(name) or name.isdigit():
        raise InvalidJailSpec(
            f"invalid jail name {name!r}: expected letters, digits, '_' and '-', "
            "not starting with '-' and not all digits"
        )


def param_name(param: str) -> str:
    """The parameter's name: the text before the first `=` (all of a bare boolean)."""
    return param.partition("=")[0]


def _affirmative(name: str) -> str:
    """`mount.nodevfs` -> `mount.devfs`: jail(8)'s `no` prefix on the last component."""
    head, dot, last = name.rpartition(".")
    if last.startswith("no") and len(last) > 2:
        return f"{head}{dot}{last[2:]}"
    return name


def given_param_names(params: Sequence[str]) -> frozenset[str]:
    """Names the user set, each also under its affirmative spelling."""
    names: set[str] = set()
    for param in params:
        name = param_name(param)
        names.add(name)
        names.add(_affirmative(name))
    return frozenset(names)


def check_jail_params(params: Sequence[str]) -> None:
    """Refuse a parameter whose name is not a jail(8) name, or one kleened owns.

    Values are not restricted: each parameter is one argument, never split,
    so spaces, quotes and `=` in a value reach jail(8) as they are.
    """
    for param in params:
        _no_nul(param, "jail parameter")
        name = param_name(param)
        if not PARAM_NAME.match(name):
            raise InvalidJailSpec(
                f"invalid jail parameter {param!r}: the name must be lower-case "
                "words separated by dots, like 'allow.raw_sockets' or 'ip4.addr'"
            )
        if name in RESERVED_PARAMS:
            raise InvalidJailSpec(f"invalid jail parameter {param!r}: '{name}' is set by kleened")


def check_env(env: Sequence[str]) -> None:
    for entry in env:
        _no_nul(entry, "environment variable")
        name, sep, _ = entry.partition("=")
        if not sep or not ENV_NAME.match(name):
            raise InvalidJailSpec(f"invalid environment variable {entry!r}: expected NAME=value")


def check_command(command: Sequence[str]) -> None:
    """The command must survive env(1)'s argument parsing unchanged (module docstring)."""
    if not command:
        raise InvalidJailSpec("no command given")
    for word in command:
        _no_nul(word, "command argument")
    first = command[0]
    if not first:
        raise InvalidJailSpec("invalid command: the program name is empty")
    if "=" in first:
        raise InvalidJailSpec(
            f"invalid command {first!r}: a program name containing '=' would be "
            "taken for an environment variable by env(1)"
        )
    if first.startswith("-"):
        raise InvalidJailSpec(
            f"invalid command {first!r}: a program name starting with '-' would be "
            "taken for an option by env(1)"
        )


def check_user(user: str) -> None:
    _no_nul(user, "user")
    if not user:
        raise InvalidJailSpec("invalid user: empty")


def _check_absolute(path: object, what: str) -> str:
    text = str(path)
    _no_nul(text, what)
    if not PurePosixPath(text).is_absolute():
        raise InvalidJailSpec(f"invalid {what} {text!r}: must be an absolute path")
    return text


# --------------------------------------------------------------------------- argument vectors


def _env_command(env: Sequence[str], command: Sequence[str]) -> list[str]:
    check_env(env)
    check_command(command)
    return [*env, *command]


def default_params(spec: JailSpec) -> list[str]:
    """The defaults of reference §8.2 that the user did not override, in order."""
    given = given_param_names(spec.jail_params)
    candidates = (
        ("mount.devfs", "mount.devfs=true"),
        # Without the original's literal double quotes (§14.3.1): with them,
        # jail(8) would look for a program called "/bin/sh /etc/rc.shutdown".
        ("exec.stop", f"exec.stop={DEFAULT_STOP_COMMAND}"),
        ("exec.clean", "exec.clean=true"),
        ("exec.jail_user", f"exec.jail_user={spec.user}"),
        ("host.hostname", f"host.hostname={spec.name}"),
    )
    return [argument for name, argument in candidates if name not in given]


def jail_create_argv(spec: JailSpec) -> list[str]:
    """`jail -c` creating the jail with `spec.command` as its first process (§8.3).

    `/usr/sbin/jail -c path=<path> name=<id> <network params…> <defaults…>
    <user params…> command=/usr/bin/env <ENV…> <cmd…>`. `exec.jail_user`
    given by the user wins over `spec.user` (reference §7.2).
    """
    check_jail_name(spec.name)
    path = _check_absolute(spec.path, "jail path")
    check_user(spec.user)
    check_jail_params(spec.network_params)
    check_jail_params(spec.jail_params)
    tail = _env_command(spec.env, spec.command)
    return [
        JAIL,
        "-c",
        f"path={path}",
        f"name={spec.name}",
        *spec.network_params,
        *default_params(spec),
        *spec.jail_params,
        f"command={ENV}",
        *tail,
    ]


def jexec_argv(spec: ExecSpec) -> list[str]:
    """`jexec` starting a further process in a running jail (reference §8.4).

    `/usr/sbin/jexec -l [-d <workdir>] -U <user> <id> /usr/bin/env <ENV…> <cmd…>`

    User precedence: `-U spec.user`, looked up in the jail's own password
    database. The driver takes `spec.user` as final; the engine computes it
    with one rule for every process, the container's first included: the
    exec's user, else the container's `exec.jail_user` parameter, else the
    container's user (reference §14.3.3; `containers.effective_user`). The
    original ignored `exec.jail_user` for jexec'd processes; we do not.

    `-l` gives the clean login environment that `exec.clean` gives the first
    process; with `-d` (jexec(8) of FreeBSD 14 and later) the command starts
    in `workdir` instead of the user's home directory.
    """
    check_jail_name(spec.name)
    check_user(spec.user)
    workdir = [] if spec.workdir is None else ["-d", _check_absolute(spec.workdir, "workdir")]
    tail = _env_command(spec.env, spec.command)
    return [JEXEC, "-l", *workdir, "-U", spec.user, spec.name, ENV, *tail]


def stop_commands(jail_params: Sequence[str]) -> list[tuple[str, ...]]:
    """The jail's exec.stop commands as argv tails, as jail(8) would have run them.

    `exec.nostop`, or `exec.stop` with an empty value, disables the step. A
    user's own `exec.stop=<command>` (possibly repeated) replaces rc.shutdown
    and runs through `/bin/sh -c`, which is how jail(8) runs exec.* strings.
    """
    check_jail_params(jail_params)
    names = [param_name(p) for p in jail_params]
    if "exec.nostop" in names:
        return []
    values = [p.partition("=")[2] for p in jail_params if param_name(p) == "exec.stop"]
    if not values:
        return [DEFAULT_STOP_ARGV]
    return [("/bin/sh", "-c", value) for value in values if value]


def jail_shutdown_argvs(name: str, jail_params: Sequence[str] = ()) -> list[list[str]]:
    """The explicit exec.stop step before removal (reference §6.5, §14.3.1).

    By default `/usr/sbin/jexec <id> /bin/sh /etc/rc.shutdown`. It runs as the
    jail's root, not as `exec.jail_user`: rc.shutdown stops services and needs
    root, and the container user may not even be able to read it.
    """
    check_jail_name(name)
    return [[JEXEC, name, *command] for command in stop_commands(jail_params)]


def jail_remove_argv(name: str) -> list[str]:
    """`/usr/sbin/jail -r <id>`: TERM, wait jail(8)'s stop.timeout, KILL, remove (§8.7)."""
    check_jail_name(name)
    return [JAIL, "-r", name]


def jail_stop_argvs(name: str, jail_params: Sequence[str] = ()) -> list[list[str]]:
    """Everything `stop` runs, in order: the shutdown step(s), then `jail -r`."""
    return [*jail_shutdown_argvs(name, jail_params), jail_remove_argv(name)]


def jail_modify_argv(name: str, params: Sequence[str]) -> list[str]:
    """`/usr/sbin/jail -m name=<id> <params…>` (reference §6.7, §8.7)."""
    check_jail_name(name)
    check_jail_params(params)
    return [JAIL, "-m", f"name={name}", *params]


def modify_failed(returncode: int, output: str) -> str:
    """The original's wording; the engine prefixes it with
    "an error ocurred while updating the container: " (reference §3.4)."""
    return (
        f"'{JAIL}' returned non-zero exitcode {returncode} "
        f"when attempting to modify the container '{output}'"
    )


def host_env(tty: bool) -> dict[str, str]:
    """The environment jail(8) and jexec(8) are started with.

    Nothing of the daemon's own environment: with `exec.noclean` it would
    reach the container (reference §14.3.9). `exec.clean` and `jexec -l` keep
    only TERM from it, so TERM is set deliberately: a terminal type for a tty,
    `dumb` for a pipe.
    """
    return {"PATH": SAFE_PATH, "TERM": "xterm" if tty else "dumb"}


# --------------------------------------------------------------------------- the driver


class Spawner(Protocol):
    async def __call__(
        self, argv: Sequence[str], *, tty: bool, env: Mapping[str, str], stdin_eof: bool
    ) -> Process: ...


async def _default_spawn(
    argv: Sequence[str], *, tty: bool, env: Mapping[str, str], stdin_eof: bool
) -> Process:
    # Imported here so this module (and its pure functions) loads without it.
    from kleened.host.process import spawn

    return await spawn(argv, tty=tty, env=env, stdin_eof=stdin_eof)


class FreeBSDJails:
    """The `Jails` Protocol with jail(8), jexec(8) and jls(8).

    `run` executes short commands (jls, jail -m, jail -r, the shutdown step);
    `spawn` starts the long-lived jail(8)/jexec(8) processes whose output is
    streamed. Both default to the real implementations.
    """

    def __init__(
        self,
        *,
        run: Runner | None = None,
        spawn: Spawner | None = None,
        command_timeout: float = DEFAULT_TIMEOUT,
        remove_timeout: float = REMOVE_TIMEOUT,
        poll_interval: float = 1.0,
    ) -> None:
        self._run: Runner = run if run is not None else runner_module.run
        self._spawn: Spawner = spawn if spawn is not None else _default_spawn
        self._command_timeout = command_timeout
        self._remove_timeout = remove_timeout
        self._poll_interval = poll_interval
        # User jail parameters of the jails this process started, so `stop`
        # knows their exec.stop without the caller repeating them. Jails found
        # after a daemon restart are not in here and get the default.
        self._started_params: dict[str, tuple[str, ...]] = {}

    async def _command(self, argv: list[str], timeout: float) -> tuple[int, str]:
        try:
            return await self._run(argv, timeout=timeout)
        except CommandError as err:
            raise JailError(str(err)) from err

    async def _start_process(self, argv: list[str], *, tty: bool, stdin_eof: bool) -> Process:
        try:
            return await self._spawn(argv, tty=tty, env=host_env(tty), stdin_eof=stdin_eof)
        except JailError:
            raise
        except (OSError, HostError) as err:
            raise JailError(f"could not start {argv[0]}: {err}") from err

    async def start(
        self, spec: JailSpec, *, before_command: BeforeCommand | None = None
    ) -> Process:
        if before_command is not None:
            raise JailError("a before-command hook is not supported on FreeBSD")
        argv = jail_create_argv(spec)
        process = await self._start_process(argv, tty=spec.tty, stdin_eof=spec.stdin_eof)
        self._started_params[spec.name] = tuple(spec.jail_params)
        return process

    async def exec(self, spec: ExecSpec) -> Process:
        return await self._start_process(jexec_argv(spec), tty=spec.tty, stdin_eof=spec.stdin_eof)

    async def stop(
        self, name: str, timeout: float = 10.0, *, jail_params: Sequence[str] | None = None
    ) -> None:
        """Run the jail's exec.stop step, then `jail -r` (reference §6.5).

        `jail_params` are the container's jail parameters (they decide the
        exec.stop step); without them, those this process started the jail
        with, else the default rc.shutdown. The shutdown step gets `timeout`
        seconds in all and may fail (the jail may lack /etc/rc.shutdown):
        that is logged, and the removal goes ahead. `jail -r` failing, for
        instance because the jail is not running, raises JailCommandError
        with the original's message.
        """
        params = jail_params if jail_params is not None else self._started_params.get(name, ())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for argv in jail_shutdown_argvs(name, params):
            remaining = deadline - loop.time()
            if remaining <= 0:
                log.warning("jail %s: no time left for %s", name, " ".join(argv[2:]))
                break
            try:
                code, output = await self._run(argv, timeout=remaining)
            except CommandError as err:
                log.warning("jail %s: shutdown step failed: %s", name, err)
                continue
            if code != 0:
                log.info("jail %s: %s", name, abnormal_exit(argv[0], code, output))
        argv = jail_remove_argv(name)
        code, output = await self._command(argv, self._remove_timeout)
        if code != 0:
            raise JailCommandError(
                abnormal_exit(JAIL, code, output), argv=argv, returncode=code, output=output
            )
        self._started_params.pop(name, None)

    async def modify(self, name: str, params: Sequence[str]) -> None:
        argv = jail_modify_argv(name, params)
        code, output = await self._command(argv, self._command_timeout)
        if code != 0:
            raise JailCommandError(
                modify_failed(code, output), argv=argv, returncode=code, output=output
            )

    async def is_running(self, name: str) -> bool:
        check_jail_name(name)
        argv = jls_check_argv(name)
        code, output = await self._command(argv, self._command_timeout)
        if code == 0:
            return True
        if code == 1:  # jls: jail "<name>" not found
            return False
        raise JailCommandError(
            abnormal_exit(argv[0], code, output), argv=argv, returncode=code, output=output
        )

    async def list_running(self) -> dict[str, RunningJail]:
        argv = jls_list_argv()
        code, output = await self._command(argv, self._command_timeout)
        if code != 0:
            raise JailCommandError(
                abnormal_exit(argv[0], code, output), argv=argv, returncode=code, output=output
            )
        return parse_jls(output)

    async def wait_stopped(self, name: str) -> None:
        """Poll `jls -j` until the jail is gone.

        FreeBSD has no portable jail-death notification a daemon can wait on
        without a helper, and polling is what "running" means anyway
        (reference §6.2). A failing jls is logged and retried, not mistaken
        for a stopped jail.
        """
        while True:
            try:
                if not await self.is_running(name):
                    self._started_params.pop(name, None)
                    return
            except InvalidJailSpec:
                raise
            except JailError as err:
                log.warning("jail %s: could not check whether it runs: %s", name, err)
            await asyncio.sleep(self._poll_interval)
