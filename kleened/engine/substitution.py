"""Variable substitution for Dockerfile arguments, in-process (reference §9.4.2).

The original daemon substituted by running `/bin/sh -c "echo -n <text>"` on the
host as root, so any Dockerfile could run host commands (`ENV X=$(touch /f)`)
and glob the daemon's working directory (§14.4.1). This module implements the
parameter-expansion subset of POSIX sh in Python and never starts a process.

Supported:

* `$NAME` and `${NAME}`; NAME is `[A-Za-z_][A-Za-z0-9_]*` (one letter is fine).
  An undefined variable expands to "" (as in sh).
* `${NAME:-word}` / `${NAME-word}`: word if NAME is unset or empty / unset.
* `${NAME:+word}` / `${NAME+word}`: word if NAME is set and non-empty / set.
* `${NAME:?word}` / `${NAME?word}`: an error (reason = word) if NAME is unset or
  empty / unset. Cheap to support and it is what sh and Docker do.
* `word` is expanded recursively, so `${A:-${B:-x}}` works; it is only
  evaluated when it is used.
* Backslash escapes the next character, whatever it is (`\\$` gives `$`,
  `\\\\` gives `\\`, `\\ ` gives a space), as unquoted sh does: the original's
  `ENV TEST3=test\\ test` gives `test test`. A backslash at the very end stays.

Left as literal text, deliberately:

* `$` not followed by a name or `{`: `$1`, `$$`, `$?`, `$@`, a trailing `$`.
  sh would expand them to a pid or positional parameters, which mean nothing
  here. (In a crypt hash `$6$salt$...`, `$salt` is still a variable, as in
  sh: write `\\$` there.)
* `$(...)`, `$((...))` and backtick spans are copied verbatim, variables inside
  included: they are never executed and never half-expanded.
* Quotes are not processed: `'` and `"` are ordinary characters (the ENV/ARG
  parser strips the value's surrounding double quotes, as the original did).
  So text without `$` and `\\` is returned unchanged, always.
* No globbing, no field splitting, no whitespace collapsing.

Errors (`SubstitutionError`): `${` without its `}`, an invalid name inside
`${...}`, an unsupported operator (`${A:=x}`, `${#A}`, `${A%x}`), a `?`
expansion of an unset variable, and nesting deeper than `MAX_NESTING`.
"""

from __future__ import annotations

import string
from collections.abc import Mapping

# Clients compare the build failure line literally, typo included (§9.4.7).
FAILURE_PREFIX = "failed environment substition of: "

# `${A:-${B:-${...}}}` recurses once per level; bounded so that a hostile
# Dockerfile gets a clean error instead of a RecursionError in the builder.
MAX_NESTING = 32

_NAME_START = frozenset(string.ascii_letters + "_")
_NAME_CHARS = _NAME_START | frozenset(string.digits)
_OPERATORS = ("-", "+", "?")
_SUPPORTED = (
    "${NAME}, ${NAME:-word}, ${NAME-word}, ${NAME:+word}, ${NAME+word}, "
    "${NAME:?word} and ${NAME?word}"
)


class SubstitutionError(ValueError):
    """Substitution failed.

    `reason` says why. `line` is the Dockerfile instruction line when the error
    comes from `dockerfile.expand_instruction`; then `str(err)` is the exact
    client message `failed environment substition of: <line>` (sic). Raised by
    `substitute` itself, `line` is None and `str(err)` is the reason.
    """

    def __init__(self, reason: str, line: str | None = None) -> None:
        self.reason = reason
        self.line = line
        super().__init__(reason if line is None else FAILURE_PREFIX + line)

    @property
    def message(self) -> str:
        return str(self)


def substitute(text: str, variables: Mapping[str, str]) -> str:
    """Expand `$NAME`, `${NAME...}` and backslash escapes in `text`; see the module doc."""
    result, _ = _Expander(text, variables).expand(0, depth=0, evaluate=True)
    return result


class _Expander:
    def __init__(self, text: str, variables: Mapping[str, str]) -> None:
        self.text = text
        self.variables = variables

    def expand(self, pos: int, *, depth: int, evaluate: bool) -> tuple[str, int]:
        """Expand from `pos` to the end, or (depth > 0) to the `}` closing a `${`.

        Returns the expansion and the position of that `}` (or len(text)).
        With `evaluate` false only the syntax is checked: the word of an
        operator that is not taken must not raise a `?` error.
        """
        text = self.text
        out: list[str] = []
        while pos < len(text):
            ch = text[pos]
            if ch == "\\":
                if pos + 1 < len(text):
                    out.append(text[pos + 1])
                    pos += 2
                else:
                    out.append(ch)
                    pos += 1
            elif ch == "}" and depth > 0:
                return "".join(out), pos
            elif ch == "$":
                piece, pos = self._dollar(pos, depth=depth, evaluate=evaluate)
                out.append(piece)
            elif ch == "`":
                end = self._backtick_end(pos)
                if end is None:
                    out.append(ch)
                    pos += 1
                else:
                    out.append(text[pos:end])
                    pos = end
            else:
                out.append(ch)
                pos += 1
        if depth > 0:
            raise SubstitutionError(f"missing '}}' to close '${{' in '{text}'")
        return "".join(out), pos

    def _dollar(self, pos: int, *, depth: int, evaluate: bool) -> tuple[str, int]:
        text = self.text
        nxt = text[pos + 1] if pos + 1 < len(text) else ""
        if nxt in _NAME_START:
            end = self._name_end(pos + 1)
            name = text[pos + 1 : end]
            return (self.variables.get(name, "") if evaluate else ""), end
        if nxt == "{":
            return self._braced(pos, depth=depth, evaluate=evaluate)
        if nxt == "(":
            end = self._paren_end(pos + 1)
            if end is not None:
                return text[pos:end], end
        return "$", pos + 1

    def _braced(self, start: int, *, depth: int, evaluate: bool) -> tuple[str, int]:
        """`${...}` beginning at `start` (the `$`)."""
        text = self.text
        if depth >= MAX_NESTING:
            raise SubstitutionError(f"'${{' nested more than {MAX_NESTING} deep in '{text}'")
        name_start = start + 2
        name_end = self._name_end(name_start)
        name = text[name_start:name_end]
        if name_end >= len(text):
            raise SubstitutionError(f"missing '}}' to close '${{' in '{text}'")
        closing = text.find("}", name_end)
        fragment = text[start : closing + 1] if closing >= 0 else text[start:]
        if not name or name[0] not in _NAME_START:
            raise SubstitutionError(f"bad substitution '{fragment}': invalid variable name")

        ch = text[name_end]
        if ch == "}":
            return (self.variables.get(name, "") if evaluate else ""), name_end + 1
        colon = ch == ":"
        op_pos = name_end + 1 if colon else name_end
        if op_pos >= len(text):
            raise SubstitutionError(f"missing '}}' to close '${{' in '{text}'")
        op = text[op_pos]
        if op not in _OPERATORS:
            raise SubstitutionError(
                f"bad substitution '{fragment}': only {_SUPPORTED} are supported"
            )

        is_set = name in self.variables
        value = self.variables.get(name, "")
        present = is_set and (value != "" or not colon)
        # The word is parsed in every case (syntax errors are errors even in a
        # branch not taken) but only evaluated when it is the result.
        uses_word = (op == "+") == present
        word, close = self.expand(op_pos + 1, depth=depth + 1, evaluate=evaluate and uses_word)
        if not evaluate:
            return "", close + 1
        if op == "-":
            return (value if present else word), close + 1
        if op == "+":
            return (word if present else ""), close + 1
        if not present:
            raise SubstitutionError(f"{name}: {word or 'parameter null or not set'}")
        return value, close + 1

    def _name_end(self, pos: int) -> int:
        while pos < len(self.text) and self.text[pos] in _NAME_CHARS:
            pos += 1
        return pos

    def _paren_end(self, pos: int) -> int | None:
        """End (exclusive) of the balanced `(...)` starting at `pos`, or None."""
        text = self.text
        level = 0
        while pos < len(text):
            ch = text[pos]
            if ch == "\\":
                pos += 2
                continue
            if ch == "(":
                level += 1
            elif ch == ")":
                level -= 1
                if level == 0:
                    return pos + 1
            pos += 1
        return None

    def _backtick_end(self, pos: int) -> int | None:
        """End (exclusive) of the backtick span starting at `pos`, or None."""
        text = self.text
        pos += 1
        while pos < len(text):
            if text[pos] == "\\":
                pos += 2
                continue
            if text[pos] == "`":
                return pos + 1
            pos += 1
        return None
