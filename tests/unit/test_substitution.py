"""In-process parameter expansion (reference §9.4.2): every form, escapes, and
the things that must stay literal because the original ran them through sh."""

from __future__ import annotations

import random
import string

import pytest

from kleened.engine.substitution import MAX_NESTING, SubstitutionError, substitute

VARS = {"A": "alpha", "EMPTY": "", "x": "one-letter", "_u": "under", "V2": "vee"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$A", "alpha"),
        ("${A}", "alpha"),
        ("pre-$A-post", "pre-alpha-post"),
        ("${A}beta", "alphabeta"),
        ("$Abeta", ""),  # the name is greedy, as in sh
        ("$A.b", "alpha.b"),
        ("$x", "one-letter"),
        ("${x}", "one-letter"),
        ("$_u", "under"),
        ("$V2", "vee"),
        ("$A$A", "alphaalpha"),
        ("/usr/$A/${x}/", "/usr/alpha/one-letter/"),
    ],
)
def test_plain_references(text: str, expected: str) -> None:
    assert substitute(text, VARS) == expected


@pytest.mark.parametrize("text", ["$UNKNOWN", "${UNKNOWN}", "$y"])
def test_unknown_variables_expand_to_empty(text: str) -> None:
    assert substitute(f"[{text}]", VARS) == "[]"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # `:-` takes the word when unset OR empty; `-` only when unset.
        ("${A:-d}", "alpha"),
        ("${EMPTY:-d}", "d"),
        ("${UNSET:-d}", "d"),
        ("${A-d}", "alpha"),
        ("${EMPTY-d}", ""),
        ("${UNSET-d}", "d"),
        # `:+` takes the word when set AND non-empty; `+` whenever set.
        ("${A:+w}", "w"),
        ("${EMPTY:+w}", ""),
        ("${UNSET:+w}", ""),
        ("${A+w}", "w"),
        ("${EMPTY+w}", "w"),
        ("${UNSET+w}", ""),
        # `?` gives the value when it is there.
        ("${A:?gone}", "alpha"),
        ("${EMPTY?gone}", ""),
        # Empty words.
        ("${UNSET:-}", ""),
        ("${A:+}", ""),
        # Words containing spaces, colons and other operators' characters.
        ("${UNSET:-a b:c-d+e}", "a b:c-d+e"),
    ],
)
def test_modifiers(text: str, expected: str) -> None:
    assert substitute(text, VARS) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${UNSET:-${A}}", "alpha"),
        ("${UNSET:-$A}", "alpha"),
        ("${UNSET:-${ALSO_UNSET:-deep}}", "deep"),
        ("${A:+[${x}]}", "[one-letter]"),
        ("${UNSET:-pre-${A:+${x}}-post}", "pre-one-letter-post"),
        ("${A:-${UNSET:?never evaluated}}", "alpha"),
    ],
)
def test_nested_words_are_expanded_only_when_used(text: str, expected: str) -> None:
    assert substitute(text, VARS) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"\$A", "$A"),
        (r"\${A}", "${A}"),
        ("\\\\", "\\"),
        ("\\\\$A", "\\alpha"),
        (r"test\ test", "test test"),  # the original's ENV TEST3 example
        (r"\$5\$2Fun7BK4thgtd4ao\$j1kidg9P", "$5$2Fun7BK4thgtd4ao$j1kidg9P"),
        (r"arr\\[0\\].txt", r"arr\[0\].txt"),  # the docs' COPY example
        ("trailing\\", "trailing\\"),
        (r"${UNSET:-a\}b}", "a}b"),
        (r"${UNSET:-\$A}", "$A"),
    ],
)
def test_backslash_escapes(text: str, expected: str) -> None:
    assert substitute(text, VARS) == expected


@pytest.mark.parametrize(
    "text",
    [
        "$",
        "cost: 5$",
        "$1",
        "$$",
        "$?",
        "$@",
        "$*",
        "$#",
        "$!",
        "$-",
        "$ A",
        "$6$",
        "$5.00",
        "$.",
        "}",
        "a}b",
    ],
)
def test_dollar_not_followed_by_a_name_is_literal(text: str) -> None:
    assert substitute(text, VARS) == text


@pytest.mark.parametrize(
    "text",
    [
        "$(touch /tmp/x)",
        "$(echo $A)",  # variables inside stay unexpanded too
        "$((1 + 2))",
        "$(a $(b) c)",
        "`touch /tmp/x`",
        "`echo $A`",
        r"`echo \` $A`",
        "pre $(id) post",
    ],
)
def test_command_substitution_is_left_literal(text: str, tmp_path) -> None:
    assert substitute(text.replace("/tmp/x", str(tmp_path / "x")), VARS) == text.replace(
        "/tmp/x", str(tmp_path / "x")
    )
    assert not (tmp_path / "x").exists()


def test_unbalanced_command_substitution_falls_back_to_literal_characters() -> None:
    assert substitute("$(oops $A", VARS) == "$(oops alpha"
    assert substitute("`oops $A", VARS) == "`oops alpha"


def test_command_substitution_inside_a_default_word_is_literal() -> None:
    assert substitute("${UNSET:-$(id)}", VARS) == "$(id)"
    assert substitute("${UNSET:-`id`}", VARS) == "`id`"


def test_quotes_are_ordinary_characters() -> None:
    assert substitute("'$A'", VARS) == "'alpha'"
    assert substitute('"$A"', VARS) == '"alpha"'


def test_no_globbing_or_whitespace_collapsing() -> None:
    assert substitute("*  ?  [a]", VARS) == "*  ?  [a]"


def test_values_are_not_rescanned() -> None:
    variables = {"A": "$B", "B": "boom", "C": "\\$"}
    assert substitute("$A ${C}", variables) == "$B \\$"


ONLY = (
    "only ${NAME}, ${NAME:-word}, ${NAME-word}, ${NAME:+word}, ${NAME+word}, "
    "${NAME:?word} and ${NAME?word} are supported"
)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("${A", "missing '}' to close '${' in '${A'"),
        ("${", "missing '}' to close '${' in '${'"),
        ("x ${A:-default", "missing '}' to close '${' in 'x ${A:-default'"),
        ("${A:-${B}", "missing '}' to close '${' in '${A:-${B}'"),
        ("${A:", "missing '}' to close '${' in '${A:'"),
        ("${}", "bad substitution '${}': invalid variable name"),
        ("${1}", "bad substitution '${1}': invalid variable name"),
        ("${#A}", "bad substitution '${#A}': invalid variable name"),
        ("${A B}", "bad substitution '${A B}': " + ONLY),
        ("${A:=x}", "bad substitution '${A:=x}': " + ONLY),
        ("${A%x}", "bad substitution '${A%x}': " + ONLY),
        ("${UNSET:?}", "UNSET: parameter null or not set"),
        ("${EMPTY:?must be given}", "EMPTY: must be given"),
        ("${UNSET?must be given}", "UNSET: must be given"),
    ],
)
def test_errors(text: str, reason: str) -> None:
    with pytest.raises(SubstitutionError) as caught:
        substitute(text, VARS)
    assert caught.value.reason == reason
    assert str(caught.value) == reason
    assert caught.value.line is None


def test_syntax_errors_count_even_in_an_unused_word() -> None:
    with pytest.raises(SubstitutionError, match="missing '}'"):
        substitute("${A:-${B", VARS)


def test_nesting_is_bounded() -> None:
    ok = "${U:-" * MAX_NESTING + "x" + "}" * MAX_NESTING
    assert substitute(ok, VARS) == "x"
    deep = "${U:-" * 10_000 + "x" + "}" * 10_000
    with pytest.raises(SubstitutionError, match=f"nested more than {MAX_NESTING} deep"):
        substitute(deep, VARS)


def test_error_with_a_line_carries_the_client_message() -> None:
    err = SubstitutionError("why", line="ENV A=${B")
    assert str(err) == "failed environment substition of: ENV A=${B"
    assert err.message == str(err)
    assert err.reason == "why"


def test_text_without_dollar_or_backslash_is_unchanged() -> None:
    # Property-style: random text over an alphabet rich in shell syntax but
    # without `$` and `\` never changes. Seeded, so a failure reproduces.
    alphabet = string.ascii_letters + string.digits + " \t\n{}()[]`'\"*?#:-+=%/.,;|&<>!~@^_é€"
    rng = random.Random(20240611)
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert substitute(text, VARS) == text


def test_empty_text() -> None:
    assert substitute("", VARS) == ""
