"""Atomic writer for STR / TextZoom-layout lmdbs.

The lmdb is built in a temporary sibling directory and renamed into place only when complete, so an
interrupted run never leaves a half-written dataset where a reader (or a later run) would take it as whole.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import TracebackType

import lmdb

__all__ = ["LmdbWriter"]


class LmdbWriter:
    def __init__(self, out: str | os.PathLike, overwrite: bool = False, commit_every: int = 1000,
                 map_size: int = 1 << 30) -> None:
        self.out = Path(out)
        if self.out.exists() and not overwrite:
            raise FileExistsError(f"{self.out}: already exists (pass --overwrite to replace it)")
        self.overwrite = overwrite
        self.tmp = self.out.with_name(f".{self.out.name}.tmp-{os.getpid()}")
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        self._map_size = map_size  # sparse on Linux; grown on demand
        self.env = lmdb.open(str(self.tmp), map_size=self._map_size, subdir=True, meminit=True, lock=True)
        self.txn = self.env.begin(write=True)
        self.commit_every = commit_every
        self._buffer: list[tuple[bytes, bytes]] = []

    def put(self, key: str | bytes, value: bytes | str) -> None:
        k = key.encode() if isinstance(key, str) else key
        v = value.encode("utf-8") if isinstance(value, str) else value
        self._buffer.append((k, v))
        try:
            self.txn.put(k, v)
        except lmdb.MapFullError:
            self._grow_and_replay()
        if len(self._buffer) >= self.commit_every:
            self.commit()

    def _grow_and_replay(self) -> None:
        # A full map aborts the transaction; grow the map and replay what the transaction held.
        self.txn.abort()
        while True:
            self._map_size *= 2
            self.env.set_mapsize(self._map_size)
            self.txn = self.env.begin(write=True)
            try:
                for k, v in self._buffer:
                    self.txn.put(k, v)
                return
            except lmdb.MapFullError:
                self.txn.abort()

    def commit(self) -> None:
        try:
            self.txn.commit()
        except lmdb.MapFullError:
            self._grow_and_replay()
            self.txn.commit()
        self.txn = self.env.begin(write=True)
        self._buffer = []

    def finish(self, num_samples: int) -> Path:
        self.put("num-samples", str(num_samples))
        self.commit()
        self.txn.abort()
        self.env.sync()
        self.env.close()
        lock = self.tmp / "lock.mdb"
        if lock.exists():
            lock.unlink()  # readers open without a lock file; keep folders like the public ones
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if self.out.exists():
            trash = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
            os.replace(self.out, trash)
            os.replace(self.tmp, self.out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(self.tmp, self.out)
        return self.out

    def abort(self) -> None:
        try:
            self.txn.abort()
            self.env.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "LmdbWriter":
        return self

    def __exit__(self, et: type | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if et is not None and self.tmp.exists():
            self.abort()
