"""The Dockerfile parser (reference §9.3 with the §14.4 fixes) and the
per-instruction substitution rules the builder applies (§9.4.2, §9.4.3)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kleened.engine.dockerfile import (
    KEYWORDS,
    MAX_DOCKERFILE_BYTES,
    ArgInstruction,
    CmdInstruction,
    CopyInstruction,
    EnvInstruction,
    FromInstruction,
    Instruction,
    ParseError,
    RunInstruction,
    UserInstruction,
    WorkdirInstruction,
    build_variables,
    expand_instruction,
    logical_lines,
    parse_dockerfile,
    parse_instruction,
    read_dockerfile,
)
from kleened.engine.errors import InvalidInput
from kleened.engine.substitution import SubstitutionError


def parse_one(line: str) -> Instruction:
    """The instruction after a FROM, parsed through the whole-file path."""
    instructions = parse_dockerfile(f"FROM base\n{line}\n")
    assert len(instructions) == 2
    return instructions[1]


def error_of(text: str) -> str:
    with pytest.raises(ParseError) as caught:
        parse_dockerfile(text)
    return str(caught.value)


# ------------------------------------------------------------------ lines


def test_a_complete_dockerfile() -> None:
    text = (
        "# build a test image\n"
        "ARG VERSION=13.2\n"
        "FROM FreeBSD:${VERSION}\n"
        "ENV GREETING=hello\n"
        "USER root\n"
        "WORKDIR /app\n"
        "COPY src/ /app/src/\n"
        'RUN echo "lol" > /root/test.txt\n'
        'CMD ["/usr/bin/uname", "-a"]\n'
    )
    instructions = parse_dockerfile(text)
    assert [type(i) for i in instructions] == [
        ArgInstruction,
        FromInstruction,
        EnvInstruction,
        UserInstruction,
        WorkdirInstruction,
        CopyInstruction,
        RunInstruction,
        CmdInstruction,
    ]
    assert [i.keyword for i in instructions] == [
        "ARG",
        "FROM",
        "ENV",
        "USER",
        "WORKDIR",
        "COPY",
        "RUN",
        "CMD",
    ]
    assert [i.line for i in instructions] == text.splitlines()[1:]
    assert {"ARG", "FROM", "ENV", "USER", "WORKDIR", "COPY", "RUN", "CMD"} == KEYWORDS


def test_continuation_joins_without_a_separator() -> None:
    assert logical_lines("RUN echo hello \\\nworld\n") == ["RUN echo hello world"]
    assert logical_lines("RUN echo hel\\\nlo\n") == ["RUN echo hello"]
    # Continuation lines keep their indentation, as in Docker.
    assert logical_lines("RUN a \\\n    b \\\n\tc\n") == ["RUN a     b \tc"]


def test_the_docs_continuation_example() -> None:
    text = "FROM base\nRUN /bin/bash -c 'source $HOME/.bashrc; \\\necho $HOME'\n"
    run = parse_dockerfile(text)[1]
    assert isinstance(run, RunInstruction)
    assert run.line == "RUN /bin/bash -c 'source $HOME/.bashrc; echo $HOME'"
    assert run.command == ("/bin/sh", "-c", "/bin/bash -c 'source $HOME/.bashrc; echo $HOME'")


def test_comment_lines_inside_a_continuation_are_dropped() -> None:
    # The docs' example: both spellings are the same instruction.
    with_comment = parse_dockerfile("FROM base\nRUN echo hello \\\n# comment\nworld\n")
    without = parse_dockerfile("FROM base\nRUN echo hello \\\nworld\n")
    assert with_comment == without
    assert with_comment[1].line == "RUN echo hello world"
    # Indented comments too, and several in a row.
    assert logical_lines("RUN a \\\n  # one\n\t# two\n  b\n") == ["RUN a   b"]


def test_trailing_backslash_at_end_of_file_ends_the_instruction() -> None:
    assert logical_lines("FROM base\nRUN echo hi \\") == ["FROM base", "RUN echo hi "]
    assert logical_lines("FROM base\nRUN echo hi \\\n") == ["FROM base", "RUN echo hi "]
    assert logical_lines("FROM base\nRUN echo hi \\\n# only a comment follows\n") == [
        "FROM base",
        "RUN echo hi ",
    ]
    run = parse_dockerfile("FROM base\nRUN echo hi \\")[1]
    assert isinstance(run, RunInstruction)
    assert run.command == ("/bin/sh", "-c", "echo hi")


def test_an_empty_line_ends_a_continuation() -> None:
    # It never swallows the next instruction.
    assert logical_lines("RUN a \\\n\nRUN b\n") == ["RUN a ", "RUN b"]
    assert logical_lines("RUN a \\\n   \t\nRUN b\n") == ["RUN a ", "RUN b"]


def test_spaces_after_the_continuation_backslash_are_allowed() -> None:
    assert logical_lines("RUN a \\  \t\nb\n") == ["RUN a b"]


def test_a_backslash_inside_a_line_is_not_a_continuation() -> None:
    assert logical_lines("RUN echo a\\b\nRUN c\n") == ["RUN echo a\\b", "RUN c"]


def test_crlf_line_endings() -> None:
    text = 'FROM base\r\nRUN echo a \\\r\n# c\r\n  b\r\nENV A=1\r\n\r\nCMD ["/bin/ls"]\r\n'
    instructions = parse_dockerfile(text)
    assert [i.line for i in instructions] == [
        "FROM base",
        "RUN echo a   b",
        "ENV A=1",
        'CMD ["/bin/ls"]',
    ]
    env = instructions[2]
    assert isinstance(env, EnvInstruction)
    assert env.value == "1"


def test_byte_order_mark_is_ignored() -> None:
    assert parse_dockerfile("\ufeffFROM base\n")[0].line == "FROM base"


def test_comments_and_blank_lines_are_ignored() -> None:
    text = "\n   \n# syntax=docker/dockerfile:1\n  # indented comment\n\tFROM base\n\n\nRUN x\n"
    assert [i.line for i in parse_dockerfile(text)] == ["\tFROM base", "RUN x"]


def test_hash_inside_arguments_is_kept() -> None:
    run = parse_one("RUN echo 'we are running some # of cool things'")
    assert isinstance(run, RunInstruction)
    assert run.command[2] == "echo 'we are running some # of cool things'"


@pytest.mark.parametrize("keyword", ["run", "Run", "rUN", "RUN"])
def test_keywords_are_case_insensitive(keyword: str) -> None:
    instructions = parse_dockerfile(f"from base\n{keyword} echo hi\n")
    assert isinstance(instructions[0], FromInstruction)
    run = instructions[1]
    assert isinstance(run, RunInstruction)
    assert run.keyword == "RUN"
    assert run.line == f"{keyword} echo hi"  # kept as written


@pytest.mark.parametrize("separator", [" ", "   ", "\t", " \t ", "\f", "\v"])
def test_any_whitespace_after_the_keyword(separator: str) -> None:
    run = parse_one(f"RUN{separator}echo hi")
    assert isinstance(run, RunInstruction)
    assert run.command == ("/bin/sh", "-c", "echo hi")


def test_leading_and_trailing_whitespace_are_allowed_and_kept_in_line() -> None:
    run = parse_one("   RUN echo hi   ")
    assert isinstance(run, RunInstruction)
    assert run.line == "   RUN echo hi   "
    assert run.command == ("/bin/sh", "-c", "echo hi")


# ------------------------------------------------------------ instructions


@pytest.mark.parametrize(
    "image",
    [
        "FreeBSD",
        "FreeBSD:13.2-RELEASE",
        "48fa55889b0f@2028818d6f06",
        "PostgreSQL:failed@fb70baa07e6e",
        "FreeBSD:${VERSION}",
        "${BASE}",
    ],
)
def test_from(image: str) -> None:
    (instr,) = parse_dockerfile(f"FROM {image}")
    assert instr == FromInstruction(line=f"FROM {image}", image=image)


def test_arg_before_from_is_allowed() -> None:
    instructions = parse_dockerfile("ARG A=1\nARG B\nFROM base:${A}\n")
    assert instructions == [
        ArgInstruction(line="ARG A=1", name="A", default="1"),
        ArgInstruction(line="ARG B", name="B", default=None),
        FromInstruction(line="FROM base:${A}", image="base:${A}"),
    ]


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("RUN echo hi", ("/bin/sh", "-c", "echo hi")),
        ("RUN  ls  -l  ", ("/bin/sh", "-c", "ls  -l")),
        ("RUN echo $HOME && ls | wc -l", ("/bin/sh", "-c", "echo $HOME && ls | wc -l")),
        ('RUN ["/bin/bash", "-c", "echo hello"]', ("/bin/bash", "-c", "echo hello")),
        ('RUN [ "echo", "$HOME" ]', ("echo", "$HOME")),
        ('RUN ["/bin/sh","-c","ls notexist"]', ("/bin/sh", "-c", "ls notexist")),
        ('RUN ["a\\\\b", "\\u00e9"]', ("a\\b", "é")),
    ],
)
def test_run(line: str, command: tuple[str, ...]) -> None:
    instr = parse_one(line)
    assert instr == RunInstruction(line=line, command=command, exec_form=line[4:].startswith("["))


@pytest.mark.parametrize(
    ("line", "command", "exec_form"),
    [
        ("CMD /usr/bin/uname", ("/bin/sh", "-c", "/usr/bin/uname"), False),
        (
            'CMD echo "This is a test." | wc -',
            ("/bin/sh", "-c", 'echo "This is a test." | wc -'),
            False,
        ),
        ('CMD ["/usr/bin/wc","--help"]', ("/usr/bin/wc", "--help"), True),
        ('CMD ["/bin/sh", "-c", "x"]', ("/bin/sh", "-c", "x"), True),
    ],
)
def test_cmd(line: str, command: tuple[str, ...], exec_form: bool) -> None:
    assert parse_one(line) == CmdInstruction(line=line, command=command, exec_form=exec_form)


@pytest.mark.parametrize(
    ("line", "name", "value"),
    [
        ("ENV MY_CAT=fluffy", "MY_CAT", "fluffy"),
        ('ENV MY_NAME="John Doe"', "MY_NAME", "John Doe"),
        ("ENV MY_DOG=Rex\\ The\\ Dog", "MY_DOG", "Rex\\ The\\ Dog"),  # unescaped at expansion
        ('ENV TEST="\\$5\\$2Fun\\$j1k"', "TEST", "\\$5\\$2Fun\\$j1k"),
        ("ENV A=", "A", ""),
        ('ENV A=""', "A", ""),
        ('ENV A=""x""', "A", "x"),  # every surrounding quote goes, as in the original
        ("ENV A='single'", "A", "'single'"),
        ("ENV URL=http://h/?a=b", "URL", "http://h/?a=b"),  # split at the first '='
        ("ENV A=1 B=2", "A", "1 B=2"),  # one pair per line, as in the original
        ("ENV x=one-letter", "x", "one-letter"),
        ("ENV _=underscore", "_", "underscore"),
        ("ENV A=${B:-c}", "A", "${B:-c}"),
        ("env\tPATH=/bin:/usr/bin", "PATH", "/bin:/usr/bin"),
    ],
)
def test_env(line: str, name: str, value: str) -> None:
    instr = parse_one(line)
    assert instr == EnvInstruction(line=line, name=name, value=value)
    assert isinstance(instr, EnvInstruction)
    assert instr.pair == f"{name}={value}"


@pytest.mark.parametrize(
    ("line", "name", "default"),
    [
        ("ARG user1", "user1", None),
        ("ARG user1=someuser", "user1", "someuser"),
        ("ARG A=", "A", ""),
        ('ARG A="quoted value"', "A", "quoted value"),
        ("ARG v=${OTHER:-x}", "v", "${OTHER:-x}"),
        ("ARG  B  ", "B", None),
    ],
)
def test_arg(line: str, name: str, default: str | None) -> None:
    assert parse_one(line) == ArgInstruction(line=line, name=name, default=default)


@pytest.mark.parametrize(
    ("line", "user"),
    [("USER patrick", "patrick"), ("USER 1001:1001", "1001:1001"), ("USER  $FOO ", "$FOO")],
)
def test_user(line: str, user: str) -> None:
    assert parse_one(line) == UserInstruction(line=line, user=user)


@pytest.mark.parametrize(
    ("line", "path"),
    [
        ("WORKDIR /a", "/a"),
        ("WORKDIR b", "b"),
        ("WORKDIR /my dir", "/my dir"),
        ("WORKDIR $DIRPATH/$DIRNAME", "$DIRPATH/$DIRNAME"),
    ],
)
def test_workdir(line: str, path: str) -> None:
    assert parse_one(line) == WorkdirInstruction(line=line, path=path)


@pytest.mark.parametrize(
    ("line", "sources", "destination", "exec_form"),
    [
        ("COPY test.txt relativeDir/", ("test.txt",), "relativeDir/", False),
        ("COPY hom* /mydir/", ("hom*",), "/mydir/", False),
        ("COPY a  b\t c   /dest/", ("a", "b", "c"), "/dest/", False),  # no empty items
        ("COPY arr\\\\[0\\\\].txt /mydir/", ("arr\\\\[0\\\\].txt",), "/mydir/", False),
        ('COPY ["my file", "/dest dir/"]', ("my file",), "/dest dir/", True),
        ('COPY ["a", "b", "/c/"]', ("a", "b"), "/c/", True),
        ("COPY $SRC ${DEST}", ("$SRC",), "${DEST}", False),
    ],
)
def test_copy(line: str, sources: tuple[str, ...], destination: str, exec_form: bool) -> None:
    assert parse_one(line) == CopyInstruction(
        line=line, sources=sources, destination=destination, exec_form=exec_form
    )


def test_heredoc_bodies_are_invalid_instructions() -> None:
    # Not supported; the body lines fail like any unknown instruction.
    assert error_of("FROM base\nRUN <<EOF\necho hi\nEOF\n") == (
        "error in 'echo hi': invalid instruction"
    )


# ----------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("line", "message"),
    [
        # [exact] the original's messages
        ("ADD a b", "error in 'ADD a b': invalid instruction"),
        ("EXPOSE 80", "error in 'EXPOSE 80': invalid instruction"),
        ("ENTRYPOINT x", "error in 'ENTRYPOINT x': invalid instruction"),
        ("BOGUS", "error in 'BOGUS': invalid instruction"),
        (
            "  \"this should faile because we omitted the '\\' above\"",
            "error in '  \"this should faile because we omitted the '\\' above\"': "
            "invalid instruction",
        ),
        ("ENV 1A=x", "ENV/ARG variable name is invalid on line: ENV 1A=x"),
        ("ENV A-B=x", "ENV/ARG variable name is invalid on line: ENV A-B=x"),
        ("ENV =x", "ENV/ARG variable name is invalid on line: ENV =x"),
        ("ARG 9", "ENV/ARG variable name is invalid on line: ARG 9"),
        ("ARG A B", "ENV/ARG variable name is invalid on line: ARG A B"),
        ("ARG A.B=1", "ENV/ARG variable name is invalid on line: ARG A.B=1"),
        # New: what crashed the original, or was accepted by accident.
        ("RUN", "error in 'RUN': RUN requires arguments"),
        ("CMD   ", "error in 'CMD   ': CMD requires arguments"),
        ("env", "error in 'env': ENV requires arguments"),
        (
            "ENV NAME value",
            "error in 'ENV NAME value': ENV needs NAME=value "
            "(the legacy form 'ENV NAME value' is not supported)",
        ),
        (
            "ENV NAME",
            "error in 'ENV NAME': ENV needs NAME=value "
            "(the legacy form 'ENV NAME value' is not supported)",
        ),
        (
            "ENV PATH /a=b",
            "error in 'ENV PATH /a=b': ENV needs NAME=value "
            "(the legacy form 'ENV NAME value' is not supported)",
        ),
        (
            'RUN ["a", ',
            "error in 'RUN [\"a\", ': invalid JSON in exec form: Expecting value at position 5",
        ),
        (
            "RUN ['single', 'quotes']",
            "error in 'RUN ['single', 'quotes']': invalid JSON in exec form: "
            "Expecting value at position 1",
        ),
        (
            "RUN [ -f /etc/x ] && echo yes",
            "error in 'RUN [ -f /etc/x ] && echo yes': invalid JSON in exec form: "
            "Expecting value at position 2",
        ),
        (
            'CMD ["a"] extra',
            "error in 'CMD [\"a\"] extra': invalid JSON in exec form: Extra data at position 6",
        ),
        ("CMD [1, 2]", "error in 'CMD [1, 2]': exec form must be a JSON array of strings"),
        ("RUN []", "error in 'RUN []': exec form must not be an empty array"),
        (
            "RUN " + "[" * 5000,
            "error in 'RUN " + "[" * 5000 + "': invalid JSON in exec form: nested too deeply",
        ),
        (
            "COPY onlyone",
            "error in 'COPY onlyone': COPY needs at least one source and a destination",
        ),
        ('COPY ["a"]', "error in 'COPY [\"a\"]': COPY needs at least one source and a destination"),
        (
            'COPY ["", "/x/"]',
            'error in \'COPY ["", "/x/"]\': COPY sources and destination must not be empty',
        ),
        ('COPY ["a", 2]', "error in 'COPY [\"a\", 2]': exec form must be a JSON array of strings"),
        (
            "COPY --chown=a:b x /y/",
            "error in 'COPY --chown=a:b x /y/': COPY option '--chown' is not supported",
        ),
        (
            "COPY --from=build x /y/",
            "error in 'COPY --from=build x /y/': COPY option '--from' is not supported",
        ),
        ("USER a b", "error in 'USER a b': USER takes exactly one user[:group]"),
    ],
)
def test_instruction_errors(line: str, message: str) -> None:
    assert error_of(f"FROM base\n{line}\n") == message


MULTI_STAGE = "multi-stage builds are not supported ('FROM <image> AS <name>')"
ONE_FROM = "only one FROM instruction is allowed (multi-stage builds are not supported)"
EXPECTED = "expected <image>[:<tag>][@<snapshot>]"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "FROM a AS b",
            "error in 'FROM a AS b': " + MULTI_STAGE,
        ),
        (
            "FROM a as b",
            "error in 'FROM a as b': " + MULTI_STAGE,
        ),
        ("FROM a b", "error in 'FROM a b': FROM takes exactly one image reference"),
        (
            "FROM --platform=x a",
            "error in 'FROM --platform=x a': FROM takes exactly one image reference",
        ),
        (
            "FROM a@",
            "error in 'FROM a@': invalid image reference 'a@': " + EXPECTED,
        ),
        (
            "FROM a@b@c",
            "error in 'FROM a@b@c': invalid image reference 'a@b@c': " + EXPECTED,
        ),
        (
            "FROM :tag",
            "error in 'FROM :tag': invalid image reference ':tag': " + EXPECTED,
        ),
        (
            "FROM a:",
            "error in 'FROM a:': invalid image reference 'a:': " + EXPECTED,
        ),
        (
            "FROM a:b:c",
            "error in 'FROM a:b:c': invalid image reference 'a:b:c': " + EXPECTED,
        ),
        (
            "FROM @snap",
            "error in 'FROM @snap': invalid image reference '@snap': " + EXPECTED,
        ),
        (
            "FROM a\nRUN x\nFROM b",
            "error in 'FROM b': " + ONE_FROM,
        ),
        (
            "FROM a\nfrom a",
            "error in 'from a': " + ONE_FROM,
        ),
    ],
)
def test_from_errors(text: str, message: str) -> None:
    assert error_of(text) == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the Dockerfile contains no instructions"),
        ("\n\n  \n", "the Dockerfile contains no instructions"),
        ("# just a comment\n# and another\n", "the Dockerfile contains no instructions"),
        ("ARG A\nARG B=1\n", "the Dockerfile has no FROM instruction"),
        # [exact] the original's message
        ("RUN echo hi\nFROM base\n", "'RUN echo hi' not permitted before a FROM instruction"),
        ("ARG A\nENV B=1\nFROM base\n", "'ENV B=1' not permitted before a FROM instruction"),
        ("  CMD x\n", "'  CMD x' not permitted before a FROM instruction"),
    ],
)
def test_structure_errors(text: str, message: str) -> None:
    assert error_of(text) == message


def test_the_first_error_in_file_order_wins() -> None:
    text = "FROM base\nBOGUS 1\nENV 1=x\nBOGUS 2\n"
    assert error_of(text) == "error in 'BOGUS 1': invalid instruction"
    # Line errors are reported before the order of instructions is checked.
    assert error_of("RUN x\nENV 1=x\n") == "ENV/ARG variable name is invalid on line: ENV 1=x"


def test_error_messages_quote_the_joined_line() -> None:
    assert (
        error_of("FROM base\nADD a \\\n# c\n  b\n") == "error in 'ADD a   b': invalid instruction"
    )


def test_parse_error_carries_the_line_and_is_invalid_input() -> None:
    with pytest.raises(ParseError) as caught:
        parse_instruction("ADD x y")
    assert caught.value.line == "ADD x y"
    assert caught.value.message == "error in 'ADD x y': invalid instruction"
    assert isinstance(caught.value, InvalidInput)
    with pytest.raises(ParseError) as empty:
        parse_dockerfile("")
    assert empty.value.line is None


# -------------------------------------------------------------- expansion

VARS = {"V": "13.2", "DIR": "/srv", "NAME": "bob", "EMPTY": ""}


def test_expand_from() -> None:
    instr = FromInstruction(line="FROM FreeBSD:${V}", image="FreeBSD:${V}")
    assert expand_instruction(instr, VARS) == FromInstruction(
        line="FROM FreeBSD:${V}", image="FreeBSD:13.2"
    )


def test_expand_env_substitutes_the_value_only() -> None:
    instr = parse_one("ENV GREETING=hi ${NAME:-nobody} \\$HOME")
    expanded = expand_instruction(instr, VARS)
    assert isinstance(expanded, EnvInstruction)
    assert expanded.pair == "GREETING=hi bob $HOME"
    assert expanded.line == instr.line  # the image stores the line as written


@pytest.mark.parametrize(
    ("line", "pair"),
    [
        ('ENV TEST="\\$5\\$2Fun7BK4thgtd4ao\\$j1kidg9P"', "TEST=$5$2Fun7BK4thgtd4ao$j1kidg9P"),
        ("ENV TEST3=test\\ test", "TEST3=test test"),
        ("ENV MY_DOG=Rex\\ The\\ Dog", "MY_DOG=Rex The Dog"),
        ('ENV MY_NAME="John Doe"', "MY_NAME=John Doe"),
        ('ENV S="it\'s fine"', "S=it's fine"),
        ("ENV X=$(touch /tmp/kleened-never)", "X=$(touch /tmp/kleened-never)"),
        ("ENV X=`id`", "X=`id`"),
    ],
)
def test_expand_env_examples_from_the_reference(line: str, pair: str) -> None:
    expanded = expand_instruction(parse_one(line), {})
    assert isinstance(expanded, EnvInstruction)
    assert expanded.pair == pair


def test_expand_arg_default() -> None:
    expanded = expand_instruction(parse_one("ARG B=${V}-x"), VARS)
    assert expanded == ArgInstruction(line="ARG B=${V}-x", name="B", default="13.2-x")
    no_default = parse_one("ARG B")
    assert expand_instruction(no_default, VARS) is no_default


def test_expand_user_and_workdir() -> None:
    assert expand_instruction(parse_one("USER $NAME"), VARS) == UserInstruction(
        line="USER $NAME", user="bob"
    )
    # The original did not substitute WORKDIR (§14.4.4); the docs' example:
    expanded = expand_instruction(parse_one("WORKDIR $DIR/$DIRNAME"), VARS)
    assert expanded == WorkdirInstruction(line="WORKDIR $DIR/$DIRNAME", path="/srv/")


def test_expand_copy_substitutes_every_item() -> None:
    instr = parse_one('COPY ["$NAME.txt", "${EMPTY:-x}*", "$DIR/"]')
    assert expand_instruction(instr, VARS) == CopyInstruction(
        line=instr.line, sources=("bob.txt", "x*"), destination="/srv/", exec_form=True
    )
    shell = parse_one("COPY \\$FOO /quux")  # the docs' escaping example
    expanded = expand_instruction(shell, VARS)
    assert isinstance(expanded, CopyInstruction)
    assert expanded.sources == ("$FOO",)


@pytest.mark.parametrize("line", ["RUN echo $NAME ${V}", 'RUN ["echo", "$NAME"]', "CMD echo $NAME"])
def test_run_and_cmd_are_not_substituted(line: str) -> None:
    instr = parse_one(line)
    assert expand_instruction(instr, VARS) is instr


def test_expand_error_reports_the_line() -> None:
    instr = parse_one("USER ${NAME")
    with pytest.raises(SubstitutionError) as caught:
        expand_instruction(instr, VARS)
    # [exact] (sic) the original's client message
    assert str(caught.value) == "failed environment substition of: USER ${NAME"
    assert caught.value.line == "USER ${NAME"
    assert caught.value.reason == "missing '}' to close '${' in '${NAME'"


def test_build_variables() -> None:
    args = {"A": "default-a", "B": "", "C": "default-c"}
    buildargs = {"A": "from-client", "UNDECLARED": "ignored", "C": "client-c"}
    env = ["C=from-env", "PATH=/bin", "BROKEN"]
    assert build_variables(args, buildargs, env) == {
        "A": "from-client",
        "B": "",
        "C": "from-env",  # ENV wins over ARG
        "PATH": "/bin",
    }


def test_an_arg_is_undefined_before_its_declaration() -> None:
    # The docs' scope example: `USER ${username:-some_user}` before `ARG username`.
    buildargs = {"username": "what_user"}
    user = parse_one("USER ${username:-some_user}")
    before = build_variables({}, buildargs, [])
    after = build_variables({"username": ""}, buildargs, [])
    assert expand_instruction(user, before) == UserInstruction(user.line, "some_user")
    assert expand_instruction(user, after) == UserInstruction(user.line, "what_user")


# ---------------------------------------------------------------- reading


def test_read_dockerfile(tmp_path: Path) -> None:
    path = tmp_path / "Dockerfile"
    path.write_bytes("FROM base\r\nRUN echo é\r\n".encode())
    assert read_dockerfile(path) == "FROM base\r\nRUN echo é\r\n"


def test_read_dockerfile_missing(tmp_path: Path) -> None:
    path = tmp_path / "nope"
    with pytest.raises(ParseError) as caught:
        read_dockerfile(path)
    assert str(caught.value) == f"Could not open Docker file {path}: :enoent"


def test_read_dockerfile_directory(tmp_path: Path) -> None:
    with pytest.raises(ParseError) as caught:
        read_dockerfile(tmp_path)
    assert str(caught.value) in (
        f"Could not open Docker file {tmp_path}: :eisdir",
        f"Could not open Docker file {tmp_path}: not a regular file",
    )


def test_read_dockerfile_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ParseError) as caught:
        read_dockerfile(fifo)
    assert str(caught.value) == f"Could not open Docker file {fifo}: not a regular file"


def test_read_dockerfile_too_large(tmp_path: Path) -> None:
    path = tmp_path / "Dockerfile"
    path.write_bytes(b"#" * (MAX_DOCKERFILE_BYTES + 1))
    with pytest.raises(ParseError) as caught:
        read_dockerfile(path)
    assert str(caught.value) == (
        f"Could not open Docker file {path}: larger than {MAX_DOCKERFILE_BYTES} bytes"
    )


def test_read_dockerfile_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "Dockerfile"
    path.write_bytes(b"FROM \xff\n")
    with pytest.raises(ParseError) as caught:
        read_dockerfile(path)
    assert str(caught.value) == f"Could not open Docker file {path}: not valid UTF-8"
