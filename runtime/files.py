"""Atomic writes: every file a tool writes appears whole or not at all (a killed run never leaves half a file)."""
from __future__ import annotations

import json
import os

__all__ = ["write_bytes_atomic", "write_json_atomic"]


def write_bytes_atomic(data: bytes, path: str | os.PathLike) -> None:
    """Write through a temp file + rename, so a reader never sees half a file."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_json_atomic(obj, path: str | os.PathLike) -> None:
    write_bytes_atomic((json.dumps(obj, indent=2) + "\n").encode(), path)
