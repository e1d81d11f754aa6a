"""Shared fixtures: paths to the real data beside the checkout and writers of small hostile lmdbs."""
from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import lmdb
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_REAL = Path(os.environ.get("SHARED_DATA", ROOT.parent / "shared" / "data")) / "real"


def png_bytes(h: int = 20, w: int = 60, value: int = 128, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = np.clip(rng.normal(value, 30, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(h: int = 20, w: int = 60, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_lmdb(path: Path, items: dict[bytes, bytes]) -> Path:
    """A raw lmdb with exactly these keys (no lock file left), for hostile-input tests."""
    path.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for k, v in items.items():
            txn.put(k, v)
    env.close()
    (path / "lock.mdb").unlink(missing_ok=True)
    return path


def textzoom_items(labels: list[str], hr=(32, 128), lr=(16, 64)) -> dict[bytes, bytes]:
    items: dict[bytes, bytes] = {b"num-samples": str(len(labels)).encode()}
    for i, lb in enumerate(labels, 1):
        items[b"image_hr-%09d" % i] = png_bytes(*hr, seed=i)
        items[b"image_lr-%09d" % i] = png_bytes(*lr, seed=1000 + i)
        items[b"label-%09d" % i] = lb.encode()
    return items


def str_items(labels: list[str]) -> dict[bytes, bytes]:
    items: dict[bytes, bytes] = {b"num-samples": str(len(labels)).encode()}
    for i, lb in enumerate(labels, 1):
        items[b"image-%09d" % i] = png_bytes(30, 90, seed=i)
        items[b"label-%09d" % i] = lb.encode()
    return items


@pytest.fixture
def shared_real() -> Path:
    if not SHARED_REAL.is_dir():
        pytest.skip(f"shared real data not found at {SHARED_REAL}")
    return SHARED_REAL


def run_module(args: list[str], **kw):
    import subprocess

    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, **kw)


def _int8_kernels_exact() -> bool:
    """Whether ONNX Runtime's x86 U8S8 int8 kernels are exact here: with VNNI (or AMX) they are; on AVX2/AVX-512
    without VNNI they sum pairs of u8 x s8 products in saturating int16 (vpmaddubsw) and can clip. Other
    architectures: assumed exact."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return True
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


# Tests that compare ONNX Runtime's INT8 results with an exact simulation or float: not meaningful where its
# kernels saturate (CI's 2-core AMD EPYC has AVX2 only). The saturation itself is a known ONNX Runtime limit.
needs_exact_int8 = pytest.mark.skipif(not _int8_kernels_exact(),
                                      reason="ONNX Runtime's U8S8 kernels saturate on this CPU (AVX2 without VNNI)")
