"""One rule for every command line of the toolkit: bad input is one line on stderr naming the file, key or option,
and exit status 2; a run that fails for another reason exits non-zero; a traceback only for bugs.

Every ``python -m ...`` entry point ends in ``sys.exit(cli.run(main))``. An error counts as bad input when it is an
``InputError`` (the toolkit's data, config, checkpoint, calibration and source errors derive from it) or one of the
file-system errors, which name their path. ``TINYTEXT_TRACEBACK=1`` shows the traceback of those too.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Sequence

__all__ = ["InputError", "run", "console_script", "check_writable", "positive", "non_negative"]


class InputError(ValueError):
    """Bad input; the message names the file, key or option (a ValueError, for API callers)."""


_FS_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    if isinstance(e, _FS_ERRORS) and getattr(e, "filename", None) and str(e.filename) not in text:
        text = f"{e.filename}: {text}"
    return " ".join(text.split())


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """``main(argv)``'s exit status; bad input -> ``error: ...`` on stderr and 2."""
    try:
        return int(main(argv) or 0)
    except (InputError, *_FS_ERRORS) as e:
        if os.environ.get("TINYTEXT_TRACEBACK"):
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def console_script(main: Callable[[Sequence[str] | None], int]) -> Callable[[], int]:
    """A console script's entry point (``[project.scripts]``): ``main`` on ``sys.argv`` under ``run``'s rule."""
    return lambda: run(main)


def check_writable(path: str | os.PathLike | None, option: str, suffixes: Sequence[str] = ()) -> None:
    """Before any work: ``path`` (an output file) can be created, with one of ``suffixes`` when given. Its folder
    must exist (the tools create no folder a typo named) and be writable."""
    if not path:
        return
    p = Path(path)
    if suffixes and p.suffix.lower() not in suffixes:
        raise InputError(f"{option} {p}: expected a {' or '.join(suffixes)} file")
    if p.is_dir():
        raise InputError(f"{option} {p}: is a folder, expected a file")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{option} {p}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise InputError(f"{option} {p}: not writable")


def positive(option: str, value: float) -> None:
    if not value > 0:
        raise InputError(f"{option}: must be > 0, got {value}")


def non_negative(option: str, value: float) -> None:
    if not value >= 0:
        raise InputError(f"{option}: must be >= 0, got {value}")
