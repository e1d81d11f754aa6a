"""Torch-free readers for the dataset layouts our users already have.

* TextZoom pair lmdb: ``image_hr-%09d``, ``image_lr-%09d``, ``label-%09d``, ``num-samples`` (1-based).
* STR lmdb (public STR benchmarks): ``image-%09d``, ``label-%09d``, ``num-samples`` (1-based).
* Image folder: ``labels.tsv`` with ``relative/path<TAB>label`` per line.

Readers open lmdbs read-only without a lock file (real folders often ship only ``data.mdb``). Labels are
scanned when a reader opens, so empty labels (after normalisation), over-long labels and undecodable labels are
filtered and counted up front. Images are decoded on access: an undecodable image raises
:class:`CorruptSample` naming its key; training wrappers count it and move on instead of crashing mid-epoch.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from .charset import normalize_textzoom
from .cli import InputError

__all__ = [
    "usable_samples",
    "content_fingerprint",
    "DataError",
    "CorruptSample",
    "LabelPolicy",
    "Sample",
    "ReaderStats",
    "Reader",
    "TextZoomReader",
    "STRLmdbReader",
    "ImageFolderReader",
    "detect_layout",
    "open_dataset",
    "decode_image",
    "open_lmdb",
    "release_lmdb",
]

LAYOUT_TEXTZOOM = "textzoom"
LAYOUT_STR = "str"
LAYOUT_FOLDER = "folder"


class DataError(InputError):
    """A dataset path that cannot be read as any supported layout; the message names the path."""


class CorruptSample(Exception):
    """One sample that cannot be decoded; ``key`` names it."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


@dataclass
class LabelPolicy:
    """How labels are cleaned when a reader opens.

    normalize: ``textzoom`` (lowercase, keep [0-9a-z]: the evaluation protocol) or ``none`` (raw labels;
    tokenizers then adapt case and apply their unknown-character policy).
    max_len: labels longer than this (after normalisation) are filtered; 0 disables the limit.
    """

    normalize: str = "none"
    max_len: int = 25

    def __post_init__(self) -> None:
        if self.normalize not in ("none", "textzoom"):
            raise ValueError(f"LabelPolicy.normalize: expected 'none' or 'textzoom', got {self.normalize!r}")
        if self.max_len < 0:
            raise ValueError(f"LabelPolicy.max_len: must be >= 0, got {self.max_len}")

    def apply(self, label: str) -> str:
        return normalize_textzoom(label) if self.normalize == "textzoom" else label.strip()


@dataclass
class Sample:
    key: str  # e.g. "000000042" for lmdbs, the relative path for folders
    label: str
    image: np.ndarray  # RGB uint8 HxWx3: the HR image for TextZoom pairs, the only image otherwise
    lr: np.ndarray | None = None  # TextZoom only: the LR image at its stored size


@dataclass
class ReaderStats:
    total: int = 0  # entries the source declares
    kept: int = 0
    filtered_empty: int = 0
    filtered_too_long: int = 0
    bad_labels: list[str] = field(default_factory=list)  # missing or non-UTF-8 labels, by key
    skipped_images: list[str] = field(default_factory=list)  # undecodable images met so far, by key

    def summary(self) -> str:
        return (
            f"{self.kept}/{self.total} kept; filtered: {self.filtered_empty} empty, {self.filtered_too_long} too long, "
            f"{len(self.bad_labels)} bad labels; skipped images: {len(self.skipped_images)}"
        )


def decode_image(buf: bytes, key: str) -> np.ndarray:
    """Encoded bytes -> RGB uint8 HxWx3. Truncated or undecodable bytes raise :class:`CorruptSample`."""
    if not buf:
        raise CorruptSample(key, "empty image bytes")
    try:
        with Image.open(io.BytesIO(buf)) as im:
            im.load()  # PIL decodes lazily; force it so truncated files fail here, not later
            arr = np.asarray(im.convert("RGB"))
    except Exception as e:  # PIL raises several types (OSError, SyntaxError, ValueError...)
        raise CorruptSample(key, f"undecodable image ({type(e).__name__}: {e})") from None
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise CorruptSample(key, f"image has zero size {arr.shape[:2]}")
    return arr


# LMDB allows an environment to be open once per process: readers of the same files share one handle.
# Keyed by the data file's identity, so a dataset replaced on disk (rename into place) opens afresh.
_ENVS: dict[tuple[int, int, int], list] = {}


def open_lmdb(path: str | os.PathLike):
    """Open an lmdb directory read-only, without a lock file (works on read-only media).
    Release with :func:`release_lmdb`."""
    import lmdb

    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such directory (expected an lmdb directory holding data.mdb)")
    if not p.is_dir():
        raise DataError(f"{p}: not a directory (expected an lmdb directory holding data.mdb)")
    if not (p / "data.mdb").is_file():
        raise DataError(f"{p}: no data.mdb here (expected an lmdb directory, or a folder with labels.tsv)")
    st = (p / "data.mdb").stat()
    pid = os.getpid()
    # Handles inherited through fork() (DataLoader workers) still count as open in this process for py-lmdb;
    # close the child's copies (read-only, lock-free: nothing to flush) so the child opens its own.
    for k in [k for k in _ENVS if k[0] != pid]:
        try:
            _ENVS.pop(k)[0].close()
        except Exception:
            pass
    key = (pid, st.st_dev, st.st_ino)
    if key in _ENVS:
        _ENVS[key][1] += 1
        return _ENVS[key][0]
    try:
        env = lmdb.open(str(p), readonly=True, lock=False, readahead=False, meminit=False, max_readers=64)
    except lmdb.Error as e:
        raise DataError(f"{p}: cannot open as lmdb ({e})") from None
    _ENVS[key] = [env, 1]
    return env


def release_lmdb(env) -> None:
    for key, entry in list(_ENVS.items()):
        if entry[0] is env:
            entry[1] -= 1
            if entry[1] <= 0:
                del _ENVS[key]
                env.close()
            return


def _num_samples(txn, path: Path) -> int:
    raw = txn.get(b"num-samples")
    if raw is None:
        raise DataError(
            f"{path}: lmdb has no 'num-samples' key; expected a TextZoom (image_hr-/image_lr-/label-%09d) "
            f"or STR (image-/label-%09d) lmdb"
        )
    try:
        return int(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise DataError(f"{path}: 'num-samples' is not an integer: {raw[:32]!r}") from None


def detect_layout(path: str | os.PathLike) -> str:
    """'textzoom', 'str' or 'folder'; a clear :class:`DataError` otherwise."""
    p = Path(path)
    if p.is_dir() and (p / "labels.tsv").is_file():
        return LAYOUT_FOLDER
    env = open_lmdb(p)
    try:
        with env.begin() as txn:
            n = _num_samples(txn, p)
            if n == 0:
                # An empty set says nothing by its keys; TextZoom-only keys cannot be seen either.
                return LAYOUT_STR
            # Look at the first few indices: a set may miss its first image but not all of them.
            for i in range(1, min(n, 8) + 1):
                if txn.get(b"image_hr-%09d" % i) is not None or txn.get(b"image_lr-%09d" % i) is not None:
                    return LAYOUT_TEXTZOOM
                if txn.get(b"image-%09d" % i) is not None:
                    return LAYOUT_STR
    finally:
        release_lmdb(env)
    raise DataError(
        f"{p}: unknown lmdb layout: num-samples={n} but none of 'image_hr-%09d', 'image-%09d' found for "
        f"indices 1..{min(n, 8)} (expected TextZoom or STR layout, 1-based keys)"
    )


class Reader:
    """Common behaviour: label scan and filtering at open, image decoding on access."""

    layout = ""

    def __init__(self, path: str | os.PathLike, policy: LabelPolicy | None = None) -> None:
        self.path = Path(path)
        self.policy = policy or LabelPolicy()
        self.stats = ReaderStats()
        self.keys: list[str] = []
        self.labels: list[str] = []
        self.raw_labels: list[str] = []

    def _admit(self, key: str, raw: bytes | str | None, label_key: str | None = None) -> None:
        label_key = label_key or key
        if raw is None:
            self.stats.bad_labels.append(f"{label_key} (missing)")
            return
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError:
                self.stats.bad_labels.append(f"{label_key} (not UTF-8)")
                return
        label = self.policy.apply(raw)
        if not label:
            self.stats.filtered_empty += 1
            return
        if self.policy.max_len and len(label) > self.policy.max_len:
            self.stats.filtered_too_long += 1
            return
        self.keys.append(key)
        self.labels.append(label)
        self.raw_labels.append(raw)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> Sample:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def iter_valid(self) -> Iterator[Sample]:
        """Every sample whose images decode; undecodable ones are counted in ``stats.skipped_images``."""
        for i in range(len(self)):
            try:
                yield self[i]
            except CorruptSample as e:
                self.record_skip(e.key)

    def record_skip(self, key: str) -> None:
        if key not in self.stats.skipped_images:
            self.stats.skipped_images.append(key)

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, {len(self)} samples)"


class _LmdbReader(Reader):
    def __init__(self, path: str | os.PathLike, policy: LabelPolicy | None = None) -> None:
        super().__init__(path, policy)
        self._env = None
        self._pid = -1
        with self.env.begin() as txn:
            n = _num_samples(txn, self.path)
            self.stats.total = n
            for i in range(1, n + 1):
                self._admit("%09d" % i, txn.get(b"label-%09d" % i), "label-%09d" % i)
        self.stats.kept = len(self.keys)

    @property
    def env(self):
        # lmdb environments must not cross fork(): DataLoader workers reopen their own.
        if self._env is None or self._pid != os.getpid():
            self._env = open_lmdb(self.path)
            self._pid = os.getpid()
        return self._env

    def _get(self, txn, name: str, idx: str) -> np.ndarray:
        key = f"{name}-{idx}"
        buf = txn.get(key.encode())
        if buf is None:
            raise CorruptSample(key, f"missing key in {self.path}")
        return decode_image(buf, key)

    def close(self) -> None:
        if self._env is not None and self._pid == os.getpid():
            release_lmdb(self._env)
        self._env = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_env"] = None
        return state


class TextZoomReader(_LmdbReader):
    layout = LAYOUT_TEXTZOOM

    def __getitem__(self, i: int) -> Sample:
        idx = self.keys[i]
        with self.env.begin() as txn:
            hr = self._get(txn, "image_hr", idx)
            lr = self._get(txn, "image_lr", idx)
        return Sample(idx, self.labels[i], hr, lr)


class STRLmdbReader(_LmdbReader):
    layout = LAYOUT_STR

    def __getitem__(self, i: int) -> Sample:
        idx = self.keys[i]
        with self.env.begin() as txn:
            img = self._get(txn, "image", idx)
        return Sample(idx, self.labels[i], img)


class ImageFolderReader(Reader):
    layout = LAYOUT_FOLDER

    def __init__(self, path: str | os.PathLike, policy: LabelPolicy | None = None) -> None:
        super().__init__(path, policy)
        tsv = self.path / "labels.tsv"
        if not tsv.is_file():
            raise DataError(f"{self.path}: no labels.tsv (expected lines 'relative/path<TAB>label')")
        with open(tsv, "rb") as f:
            for lineno, line in enumerate(f, 1):
                line = line.rstrip(b"\r\n")
                if not line.strip():
                    continue
                self.stats.total += 1
                rel, sep, label = line.partition(b"\t")
                key = f"labels.tsv:{lineno}"
                if not sep:
                    self.stats.bad_labels.append(f"{key} (no TAB)")
                    continue
                try:
                    rel_s = rel.decode("utf-8")
                except UnicodeDecodeError:
                    self.stats.bad_labels.append(f"{key} (path not UTF-8)")
                    continue
                self._admit(rel_s, label, key)
        self.stats.kept = len(self.keys)

    def __getitem__(self, i: int) -> Sample:
        rel = self.keys[i]
        p = self.path / rel
        try:
            buf = p.read_bytes()
        except OSError as e:
            raise CorruptSample(rel, f"cannot read {p} ({e.strerror})") from None
        return Sample(rel, self.labels[i], decode_image(buf, rel))


_READERS: dict[str, Callable[..., Reader]] = {
    LAYOUT_TEXTZOOM: TextZoomReader,
    LAYOUT_STR: STRLmdbReader,
    LAYOUT_FOLDER: ImageFolderReader,
}


def usable_samples(path: str | os.PathLike, policy: LabelPolicy | None = None, max_samples: int = 0,
                   who: str = "read") -> list[Sample]:
    """The first ``max_samples`` (0: all) samples of a dataset that decode and pass the label policy. What was left
    out (undecodable images, missing or non-UTF-8 labels, labels filtered) is reported on stderr with the counts
    ``distill.data info`` prints; a dataset with no usable sample is a DataError naming it."""
    import sys

    if max_samples < 0:
        raise DataError(f"max samples: must be >= 0 (0: all), got {max_samples}")
    r = open_dataset(path, policy)
    out: list[Sample] = []
    try:
        for s in r.iter_valid():
            out.append(s)
            if max_samples and len(out) >= max_samples:
                break
        st = r.stats
    finally:
        r.close()
    if st.filtered_empty + st.filtered_too_long + len(st.bad_labels) + len(st.skipped_images):
        print(f"{who}: {path}: {st.summary()}", file=sys.stderr)
    if not out:
        raise DataError(f"{path}: no usable samples ({st.summary()})")
    return out


def content_fingerprint(path: str | os.PathLike) -> str:
    """A hash of what a dataset holds: every file under ``path`` (or the file itself), by relative name and bytes;
    lmdb lock files aside. Caches computed from a dataset are keyed by it, so they follow its content, not its
    name."""
    import hashlib

    p = Path(path)
    h = hashlib.sha256()
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file() and f.name != "lock.mdb")
    for f in files:
        h.update(str(f.relative_to(p) if f != p else f.name).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def open_dataset(path: str | os.PathLike, policy: LabelPolicy | None = None, layout: str | None = None) -> Reader:
    """Open any supported dataset; the layout is detected unless given."""
    layout = layout or detect_layout(path)
    if layout not in _READERS:
        raise DataError(f"{path}: unknown layout {layout!r}; expected one of {sorted(_READERS)}")
    return _READERS[layout](path, policy)
