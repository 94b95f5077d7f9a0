"""User-facing errors: every message names the file, the row and the fix.

The CLI prints these without a traceback (unless ``--debug``); anything else is a bug.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Collection, Iterable

#: what must never reach a terminal or a log as it is: C0 and C1 control characters (an escape
#: sequence clears the screen, a newline or a carriage return forges a line), the line and
#: paragraph separators, bidirectional and zero-width format characters (they reorder or hide
#: text), and the surrogates Python holds a file name's non-UTF-8 bytes in
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e"
                     "\u2060-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match) -> str:
    char = match.group()
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (os.fsdecode's surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return _NAMED.get(char, f"\\x{code:02x}")
    return f"\\u{code:04x}"


def escaped(text: object, keep: str = "") -> str:
    """``text`` as it may be printed to a terminal or a log: every user-supplied string (a file
    or folder name, an ID, a CSV value) goes through here, its control, separator and format
    characters written as ``\\x1b``, ``\\n``, ``\\u202e`` (``keep``: characters left as
    they are, e.g. the newlines of a message lymphomil itself lays out)."""
    value = str(text)
    if keep:
        return _UNSAFE.sub(lambda m: m.group() if m.group() in keep else _escaped(m), value)
    return _UNSAFE.sub(_escaped, value)


class LymphomilError(Exception):
    """An error the user can fix; its text is the whole message they see."""

    def __init__(self, problem: str, *, file: str | Path | None = None, row: int | None = None,
                 fix: str | None = None):
        self.problem = problem
        self.file = str(file) if file is not None else None
        self.row = row
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        """``FILE, row N: problem`` and ``  fix: …`` on the next line; every part escaped
        (:func:`escaped`): a file name or a value can never forge a line or clear a screen."""
        where = ""
        if self.file is not None:
            row = f", row {self.row}" if self.row is not None else ""
            where = f"{escaped(self.file)}{row}: "
        text = where + escaped(self.problem)
        if self.fix:
            text += f"\n  fix: {escaped(self.fix)}"
        return text


def from_os_error(exc: OSError) -> LymphomilError:
    """A disk or permission failure as a message naming the file and the fix (never a bug)."""
    import errno

    where = exc.filename if exc.filename is not None else None
    reason = exc.strerror or str(exc)
    fixes = {
        errno.ENOSPC: "free some space on that disk, or point --cache-dir / --out at another one",
        errno.EDQUOT: "free some space (the disk quota is reached), or use another folder",
        errno.EROFS: "the disk is read-only: point --cache-dir / --out at a writable folder",
        errno.EACCES: "check the permissions, or point --cache-dir / --out at a folder you own",
        errno.EPERM: "check the permissions, or point --cache-dir / --out at a folder you own",
        errno.ELOOP: "the path is a symbolic link loop: replace the link",
        errno.ENAMETOOLONG: "use a shorter path",
        errno.ENOENT: "check the path",
        errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
        errno.EISDIR: "the path is a folder where a file was expected: check the path",
    }
    return LymphomilError(f"cannot read or write ({reason})", file=where,
                          fix=fixes.get(exc.errno or 0, "check the path, its permissions and the "
                                                       "free space"))


def did_you_mean(word: str, choices: Iterable[str], what: str = "") -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or "" (difflib: no name dump)."""
    import difflib

    close = difflib.get_close_matches(str(word), list(choices), n=3, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean {' or '.join(repr(c) for c in close)}{what}?)"


def plain_problems(exc: Exception, known: Iterable[str] = (), limit: int = 5) -> str:
    """A pydantic ``ValidationError`` in plain words: ``key: problem`` per error, without the
    library's ``Value error,`` / ``Input should be`` wording; an unknown key gets a did-you-mean
    among ``known``."""
    known = list(known)
    errors = exc.errors()  # type: ignore[attr-defined]
    parts = []
    for error in errors[:limit]:
        where = ".".join(map(str, error.get("loc", ()))) or "the file"
        kind, message = error.get("type", ""), str(error.get("msg", ""))
        if kind == "value_error":
            text = message.removeprefix("Value error, ")
        elif kind == "extra_forbidden":
            text = "is not a known setting" + did_you_mean(where, known)
        elif kind == "missing":
            text = "is required"
        else:
            shown = repr(error.get("input"))
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            text = (message[:1].lower() + message[1:]).replace("input should", "should") + \
                f" (got {shown})"
        parts.append(text if text.startswith(where) else f"{where}: {text}")
    if len(errors) > limit:
        parts.append(f"and {len(errors) - limit} more")
    return "; ".join(parts)


def one_of(choices: Callable[[], Collection[str]], problem: str) -> Any:
    """A pydantic field check (``Annotated[str, one_of(...)]``) for a config or model-file field
    whose value must be one of ``choices()``, asked at validation time (registries fill on first
    use); else a ``ValueError`` of ``problem`` with ``{value!r}`` and ``{choices}`` filled in."""
    from pydantic import AfterValidator

    def check(value: str) -> str:
        allowed = choices()
        if value not in allowed:
            hint = did_you_mean(value, allowed) if "{choices}" not in problem else ""
            raise ValueError(problem.format(value=value, choices=", ".join(allowed)) + hint)
        return value

    return AfterValidator(check)


def format_problem(found: Any, supported: int, what: str) -> tuple[str, str] | None:
    """(problem, fix) when a file's format number is not the one this lymphomil reads, saying
    which side is newer and what to do; None when it is. ``what``: what to re-create ("model
    folder", "referral rule")."""
    if isinstance(found, int) and not isinstance(found, bool) and found == supported:
        return None
    if isinstance(found, bool) or not isinstance(found, int):
        return (f"has no valid format number ({found!r}; this lymphomil reads format "
                f"{supported})", f"re-create the {what} with this lymphomil")
    if found > supported:
        return (f"is format {found}, newer than this lymphomil reads (format {supported}): a "
                "newer lymphomil wrote it", f"upgrade lymphomil (pip install -U lymphomil) to "
                                           f"read it, or re-create the {what} with this version")
    return (f"is format {found}, older than this lymphomil reads (format {supported}): an older "
            "lymphomil wrote it", f"re-create the {what} with this version, or read it with the "
                                  "lymphomil version that wrote it")
