"""Dockerfile parsing (reference §9.3) with the §14.4 defects fixed.

Lines:

* A `\\` at the end of a line (trailing spaces/tabs allowed, as in Docker)
  continues the instruction on the next line. The pieces are joined with no
  separator, as in the original and Docker. Comment lines inside a continued
  instruction are dropped (Docker; the original kept them, §14.4.5). An empty
  line, or the end of the file, ends a continued instruction (the trailing
  `\\` is dropped): an instruction never swallows the next one.
* `\\r\\n` line endings and a UTF-8 byte order mark are accepted.
* Empty lines and comment lines (`#` after optional whitespace) are ignored
  outside instructions; `#` anywhere else is part of the arguments. Parser
  directives (`# syntax=...`) are ordinary comments, heredocs are not
  supported.
* Keywords are case-insensitive (Docker's rule; the original and its docs
  required uppercase, §14.4.5) and any whitespace may follow them.
* Each instruction keeps its joined line exactly as written (`line`): it is what
  `Step i/M : <line>` shows, what the image stores in `instructions`, and what
  error messages quote.

Instructions: FROM, ARG, ENV, USER, WORKDIR, RUN, CMD, COPY; any other keyword
is `invalid instruction`. Decisions beyond the original:

* `FROM a AS b` and a second FROM are errors (multi-stage builds are not
  supported; the original crashed).
* Exec form (RUN, CMD, COPY) is chosen by a leading `[` and must then be a JSON
  array of strings; unlike Docker there is no fallback to shell form, so a
  shell command starting with `[` must be written differently (`test ...`).
* `ENV NAME=value`: one pair per line, everything after the first `=` is the
  value, and all leading/trailing `"` are stripped (as the original). Docker's
  legacy `ENV NAME value` form is a clean error (the original crashed).
* ENV/ARG names match `^[a-zA-Z_][a-zA-Z0-9_]*$`: one letter is allowed now.
* COPY's shell form splits on any whitespace (the original split on single
  spaces, giving empty items); COPY flags (`--chown`, `--from`) are errors.

Errors raise `ParseError`; `str(err)` is the client message. The first error in
file order wins; then the order of instructions is checked. Messages are
`error in '<line>': <reason>`, except two the original defined and clients
compare literally: `ENV/ARG variable name is invalid on line: <line>` and
`'<line>' not permitted before a FROM instruction`.

Variables (§9.4.2, §9.4.3) are the builder's business; `build_variables` and
`expand_instruction` give it the rules. ARGs declared before FROM stay in scope
after it, as in the original (Docker forgets them; §14.4.9). Two changes from
the original, both as Docker does: WORKDIR is substituted (§14.4.4), and so is
an ARG default (`ARG B=${A}-x`), which the original kept literal.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar, TypeVar

from kleened.engine.errors import InvalidInput
from kleened.engine.substitution import SubstitutionError, substitute

NAME_PATTERN = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

# A Dockerfile is a few kilobytes; the limit keeps `-f /dev/zero`-style
# mistakes from filling the daemon's memory.
MAX_DOCKERFILE_BYTES = 1024 * 1024

_WHITESPACE = " \t\f\v"
_CONTINUATION = re.compile(r"\\[ \t]*$")
_KEYWORD = re.compile(r"[ \t\f\v]*(\S+)(?:[ \t\f\v]+(.*))?$", re.ASCII | re.DOTALL)

SHELL = ("/bin/sh", "-c")


class ParseError(InvalidInput):
    """The Dockerfile cannot be used. `str(err)` is the message for the client.

    `line` is the offending instruction line, when there is one.
    """

    def __init__(self, message: str, *, line: str | None = None) -> None:
        super().__init__(message)
        self.line = line


def _error(line: str, reason: str) -> ParseError:
    return ParseError(f"error in '{line}': {reason}", line=line)


@dataclass(frozen=True, slots=True)
class Instruction:
    """One Dockerfile instruction. `line` is the joined line, exactly as written."""

    keyword: ClassVar[str] = ""
    line: str


@dataclass(frozen=True, slots=True)
class FromInstruction(Instruction):
    """`FROM image[:tag][@snapshot]` (or `id[@snapshot]`); resolved by the builder."""

    keyword: ClassVar[str] = "FROM"
    image: str


@dataclass(frozen=True, slots=True)
class ArgInstruction(Instruction):
    """`ARG NAME[=default]`; `default` is None without `=` (the builder uses "")."""

    keyword: ClassVar[str] = "ARG"
    name: str
    default: str | None


@dataclass(frozen=True, slots=True)
class EnvInstruction(Instruction):
    keyword: ClassVar[str] = "ENV"
    name: str
    value: str

    @property
    def pair(self) -> str:
        """`NAME=value`, the form stored in a container's and an image's env."""
        return f"{self.name}={self.value}"


@dataclass(frozen=True, slots=True)
class UserInstruction(Instruction):
    keyword: ClassVar[str] = "USER"
    user: str


@dataclass(frozen=True, slots=True)
class WorkdirInstruction(Instruction):
    keyword: ClassVar[str] = "WORKDIR"
    path: str


@dataclass(frozen=True, slots=True)
class RunInstruction(Instruction):
    """`command` is the exec vector; shell form gives `("/bin/sh", "-c", text)`."""

    keyword: ClassVar[str] = "RUN"
    command: tuple[str, ...]
    exec_form: bool


@dataclass(frozen=True, slots=True)
class CmdInstruction(Instruction):
    keyword: ClassVar[str] = "CMD"
    command: tuple[str, ...]
    exec_form: bool


@dataclass(frozen=True, slots=True)
class CopyInstruction(Instruction):
    keyword: ClassVar[str] = "COPY"
    sources: tuple[str, ...]
    destination: str
    exec_form: bool


# --------------------------------------------------------------------- reading


def read_dockerfile(path: str | Path) -> str:
    """The Dockerfile's text, or ParseError `Could not open Docker file <path>: <reason>`.

    The reason is an errno atom such as `:enoent`, as the original printed it.
    Blocking: the builder runs it in a thread.
    """

    def fail(reason: str) -> ParseError:
        return ParseError(f"Could not open Docker file {path}: {reason}")

    try:
        # O_NONBLOCK so that opening a FIFO cannot hang the build; FIFOs and
        # devices are then refused, since reading them may never end.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise fail("not a regular file")
            data = handle.read(MAX_DOCKERFILE_BYTES + 1)
    except OSError as exc:
        name = errno.errorcode.get(exc.errno) if exc.errno else None
        raise fail(f":{name.lower()}" if name else str(exc)) from None
    if len(data) > MAX_DOCKERFILE_BYTES:
        raise fail(f"larger than {MAX_DOCKERFILE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise fail("not valid UTF-8") from None


# --------------------------------------------------------------------- parsing


def parse_dockerfile(text: str) -> list[Instruction]:
    """Parse and check a whole Dockerfile; raises ParseError (first error wins)."""
    instructions = [parse_instruction(line) for line in logical_lines(text)]
    if not instructions:
        raise ParseError("the Dockerfile contains no instructions")
    first = 0
    while first < len(instructions) and isinstance(instructions[first], ArgInstruction):
        first += 1
    if first == len(instructions):
        raise ParseError("the Dockerfile has no FROM instruction")
    if not isinstance(instructions[first], FromInstruction):
        # [exact] the original's message
        line = instructions[first].line
        raise ParseError(f"'{line}' not permitted before a FROM instruction", line=line)
    for later in instructions[first + 1 :]:
        if isinstance(later, FromInstruction):
            raise _error(
                later.line,
                "only one FROM instruction is allowed (multi-stage builds are not supported)",
            )
    return instructions


def logical_lines(text: str) -> list[str]:
    """Instruction lines after joining continuations and dropping comments/blank lines."""
    lines: list[str] = []
    pieces: list[str] | None = None  # the instruction being continued

    def finish() -> None:
        joined = "".join(pieces or ())
        if joined.strip(_WHITESPACE):
            lines.append(joined)

    for raw in text.removeprefix("\ufeff").split("\n"):
        physical = raw.removesuffix("\r")
        blank = not physical.strip(_WHITESPACE)
        comment = physical.lstrip(_WHITESPACE).startswith("#")
        if pieces is None:
            if blank or comment:
                continue
            pieces = []
        elif comment:
            continue
        elif blank:
            finish()
            pieces = None
            continue
        continued = _CONTINUATION.search(physical)
        if continued:
            pieces.append(physical[: continued.start()])
            continue
        pieces.append(physical)
        finish()
        pieces = None
    if pieces is not None:  # a trailing `\` at the end of the file
        finish()
    return lines


def parse_instruction(line: str) -> Instruction:
    """One joined instruction line -> an Instruction; raises ParseError."""
    match = _KEYWORD.match(line)
    if match is None:
        raise _error(line, "invalid instruction")
    keyword = match.group(1).upper()
    parser = _PARSERS.get(keyword)
    if parser is None:
        raise _error(line, "invalid instruction")  # [exact]
    args = (match.group(2) or "").strip(_WHITESPACE)
    if not args:
        raise _error(line, f"{keyword} requires arguments")
    return parser(line, args)


def _parse_from(line: str, args: str) -> FromInstruction:
    words = args.split()
    if len(words) == 3 and words[1].upper() == "AS":
        raise _error(line, "multi-stage builds are not supported ('FROM <image> AS <name>')")
    if len(words) != 1:
        raise _error(line, "FROM takes exactly one image reference")
    image = words[0]
    # With a variable in it, the reference can only be checked after substitution.
    if "$" not in image and not _valid_reference(image):
        raise _error(
            line, f"invalid image reference '{image}': expected <image>[:<tag>][@<snapshot>]"
        )
    return FromInstruction(line=line, image=image)


def _valid_reference(ref: str) -> bool:
    nametag, at, snapshot = ref.partition("@")
    if at and (not snapshot or "@" in snapshot):
        return False
    name, colon, tag = nametag.partition(":")
    return bool(name) and (not colon or (bool(tag) and ":" not in tag))


def _parse_arg(line: str, args: str) -> ArgInstruction:
    name, eq, default = args.partition("=")
    _check_name(line, name)
    return ArgInstruction(line=line, name=name, default=default.strip('"') if eq else None)


def _parse_env(line: str, args: str) -> EnvInstruction:
    name, eq, value = args.partition("=")
    # `ENV NAME value`, or `ENV NAME value=with-equals`: the legacy form.
    first_word = name.split(maxsplit=1)[0] if name.strip() else name
    if not eq or (first_word != name and NAME_PATTERN.fullmatch(first_word)):
        raise _error(
            line, "ENV needs NAME=value (the legacy form 'ENV NAME value' is not supported)"
        )
    _check_name(line, name)
    # The original strips every leading and trailing double quote.
    return EnvInstruction(line=line, name=name, value=value.strip('"'))


def _check_name(line: str, name: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        # [exact] the original's message
        raise ParseError(f"ENV/ARG variable name is invalid on line: {line}", line=line)


def _parse_user(line: str, args: str) -> UserInstruction:
    if len(args.split()) != 1:
        raise _error(line, "USER takes exactly one user[:group]")
    return UserInstruction(line=line, user=args)


def _parse_workdir(line: str, args: str) -> WorkdirInstruction:
    return WorkdirInstruction(line=line, path=args)


def _command(line: str, args: str) -> tuple[tuple[str, ...], bool]:
    if args.startswith("["):
        return _json_array(line, args), True
    return (*SHELL, args), False


def _json_array(line: str, args: str) -> tuple[str, ...]:
    try:
        value = json.loads(args)
    except json.JSONDecodeError as exc:
        raise _error(line, f"invalid JSON in exec form: {exc.msg} at position {exc.pos}") from None
    except RecursionError:
        raise _error(line, "invalid JSON in exec form: nested too deeply") from None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _error(line, "exec form must be a JSON array of strings")
    if not value:
        raise _error(line, "exec form must not be an empty array")
    return tuple(value)


def _parse_run(line: str, args: str) -> RunInstruction:
    command, exec_form = _command(line, args)
    return RunInstruction(line=line, command=command, exec_form=exec_form)


def _parse_cmd(line: str, args: str) -> CmdInstruction:
    command, exec_form = _command(line, args)
    return CmdInstruction(line=line, command=command, exec_form=exec_form)


def _parse_copy(line: str, args: str) -> CopyInstruction:
    exec_form = args.startswith("[")
    items = _json_array(line, args) if exec_form else tuple(args.split())
    if not exec_form and items[0].startswith("--"):
        raise _error(line, f"COPY option '{items[0].split('=')[0]}' is not supported")
    if len(items) < 2:
        raise _error(line, "COPY needs at least one source and a destination")
    if "" in items:
        raise _error(line, "COPY sources and destination must not be empty")
    return CopyInstruction(
        line=line, sources=items[:-1], destination=items[-1], exec_form=exec_form
    )


_PARSERS = {
    "FROM": _parse_from,
    "ARG": _parse_arg,
    "ENV": _parse_env,
    "USER": _parse_user,
    "WORKDIR": _parse_workdir,
    "RUN": _parse_run,
    "CMD": _parse_cmd,
    "COPY": _parse_copy,
}

KEYWORDS = frozenset(_PARSERS)


# ------------------------------------------------------------------- variables


def build_variables(
    args: Mapping[str, str], buildargs: Mapping[str, str], env: Iterable[str]
) -> dict[str, str]:
    """The variables visible to a build step (§9.4.2).

    `args` are the ARGs declared so far (name -> default, "" without one);
    `buildargs` the client's values, which only count for declared names;
    `env` the build container's `NAME=value` entries, which win over ARGs.
    """
    variables = {name: buildargs.get(name, default) for name, default in args.items()}
    for entry in env:
        name, eq, value = entry.partition("=")
        if eq:
            variables[name] = value
    return variables


InstructionT = TypeVar("InstructionT", bound=Instruction)


def expand_instruction(instr: InstructionT, variables: Mapping[str, str]) -> InstructionT:
    """`instr` with its variables substituted; `line` stays as written.

    Substituted: FROM's image, ENV's value, ARG's default, USER, WORKDIR (the
    original did not; §14.4.4, as Docker and the docs say) and every COPY item.
    Not substituted: RUN and CMD; the shell in the jail expands those at run
    time with the build variables in its environment.
    Raises SubstitutionError whose `str()` is `failed environment substition of:
    <line>` (sic, [exact]) and whose `reason` says why.
    """

    def sub(text: str) -> str:
        return substitute(text, variables)

    try:
        if isinstance(instr, FromInstruction):
            return replace(instr, image=sub(instr.image))
        if isinstance(instr, EnvInstruction):
            return replace(instr, value=sub(instr.value))
        if isinstance(instr, ArgInstruction) and instr.default is not None:
            return replace(instr, default=sub(instr.default))
        if isinstance(instr, UserInstruction):
            return replace(instr, user=sub(instr.user))
        if isinstance(instr, WorkdirInstruction):
            return replace(instr, path=sub(instr.path))
        if isinstance(instr, CopyInstruction):
            return replace(
                instr,
                sources=tuple(sub(source) for source in instr.sources),
                destination=sub(instr.destination),
            )
    except SubstitutionError as exc:
        raise SubstitutionError(exc.reason, line=instr.line) from None
    return instr
