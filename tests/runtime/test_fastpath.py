"""runtime.fastpath: the C extension and its NumPy twin agree, match the training preprocessing, and turn hostile
input into Python exceptions. CI runs this file (with the whole suite) on both paths and under AddressSanitizer."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import SHARED_REAL
from runtime import _native_py, fastpath

try:
    from runtime import _native
except ImportError:  # not built (no compiler): the twin alone is tested
    _native = None
if os.environ.get("RUNTIME_NATIVE_LIB"):  # the AddressSanitizer build
    _native = fastpath._impl

IMPLS = [pytest.param(_native_py, id="numpy")] + ([pytest.param(_native, id="c")] if _native else [])
needs_c = pytest.mark.skipif(_native is None, reason="C extension not built")


@pytest.fixture(params=IMPLS)
def impl(request, monkeypatch):
    monkeypatch.setattr(fastpath, "_impl", request.param)
    return request.param


def _on_every_path(fn) -> list:
    """``fn()`` on the NumPy twin and (when built) the C extension: each result, or its ValueError's message."""
    results = []
    for m in [_native_py] + ([_native] if _native else []):
        fastpath._impl = m
        try:
            results.append(fn())
        except ValueError as e:
            results.append(str(e))
        finally:
            fastpath._impl = fastpath._load()[0]
    return results


def test_selector_honours_the_environment():
    assert fastpath.IMPLEMENTATION == ("numpy" if os.environ.get("RUNTIME_PUREPYTHON") == "1" else
                                       "c" if fastpath.native_available() or os.environ.get("RUNTIME_NATIVE_LIB")
                                       else "numpy")


@needs_c
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_c_and_numpy_agree_on_boxes_and_quads(dtype):
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (240, 320, 3), np.uint8)
    boxes = np.array([[10.5, 20.2, 90.7, 45.0], [0, 0, 320, 240], [300, 200, 330, 250], [-10, -5, 20, 12]])
    quads = np.array([[[30, 40], [200, 60], [195, 100], [25, 80]], [[5, 5], [69, 5], [69, 21], [5, 21]]], float)
    for b in (boxes, quads):
        for keep in (False, True):
            p, c = _on_every_path(lambda: fastpath.pack(frame, b, (16, 64), keep_aspect=keep, pad=-1.0, dtype=dtype))
            assert c.dtype == p.dtype == dtype
            assert np.abs(c.astype(np.float32) - p.astype(np.float32)).max() <= 1 / 127.5 + 1e-3  # 1 LSB


def test_matches_pillow_bicubic_on_real_crops(impl):
    """The training preprocessing is Pillow's bicubic algorithm: on real crops nearly every pixel is identical."""
    from runtime.datasets import open_dataset

    path = SHARED_REAL / "svt_test"
    if not path.exists():
        pytest.skip(f"{path} not present")
    ds = open_dataset(str(path))
    diffs = []
    for i in range(0, min(len(ds), 120), 3):
        img = np.ascontiguousarray(ds[i].image)
        ref = np.asarray(Image.fromarray(img).resize((64, 16), Image.BICUBIC)).astype(np.float32)
        out = fastpath.pack(img, [[0, 0, img.shape[1], img.shape[0]]], (16, 64), 0.0, 1 / 255, swap_rb=False)
        diffs.append(np.abs(out[0].transpose(1, 2, 0) - ref))
    d = np.concatenate([x.ravel() for x in diffs])
    assert d.mean() < 0.1 and (d <= 1.001).mean() > 0.995, (d.mean(), d.max())


def test_identity_box_is_exact_and_channels_swap(impl):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (16, 64, 3), np.uint8)
    out = fastpath.pack(img, [[0, 0, 64, 16]], (16, 64), 0.0, 1 / 255, swap_rb=True)[0]
    np.testing.assert_allclose(out.transpose(1, 2, 0), img[..., ::-1].astype(np.float32), atol=1e-3)


def test_keep_aspect_pads_on_the_right(impl):
    img = np.full((20, 40, 3), 255, np.uint8)
    out = fastpath.pack(img, [[0, 0, 40, 20]], (16, 64), keep_aspect=True, pad=-7.0)[0]
    assert np.allclose(out[:, :, :32], 1.0) and np.allclose(out[:, :, 32:], -7.0)


def test_hostile_inputs_raise_the_same_errors(impl):
    f = np.zeros((50, 60, 3), np.uint8)
    cases = [
        (lambda: fastpath.pack(f.astype(np.float32), [[0, 0, 5, 5]], (16, 64)), TypeError, "uint8"),
        (lambda: fastpath.pack(f[..., 0], [[0, 0, 5, 5]], (16, 64)), ValueError, "shape"),
        (lambda: fastpath.pack(f[:, ::2], [[0, 0, 5, 5]], (16, 64)), ValueError, "C-contiguous"),
        (lambda: fastpath.pack([[1]], [[0, 0, 5, 5]], (16, 64)), TypeError, "numpy array"),
        (lambda: fastpath.pack(f, [[0, 0, np.nan, 5]], (16, 64)), ValueError, "non-finite"),
        (lambda: fastpath.pack(f, [[10, 10, 5, 20]], (16, 64)), ValueError, "box 0"),
        (lambda: fastpath.pack(f, [[0, 0, 5, 5], [100, 100, 120, 120]], (16, 64)), ValueError, "box 1"),
        (lambda: fastpath.pack(f, [[0, 0, 5]], (16, 64)), ValueError, "expected \\(N, 4\\)"),
        (lambda: fastpath.pack(f, [[[0, 0], [0, 0], [0, 0], [0, 0]]], (16, 64)), ValueError, "quad 0"),
        (lambda: fastpath.pack(f, [[[500, 500], [600, 500], [600, 600], [500, 600]]], (16, 64)), ValueError, "outside"),
        (lambda: fastpath.pack(f, [[0, 0, 5, 5]], (0, 64)), ValueError, "size"),
        (lambda: fastpath.pack(f, [[0, 0, 5, 5]], (16, 64), std=0), ValueError, "std"),
        (lambda: fastpath.pack(f, [[0, 0, 5, 5]], (16, 64), dtype=np.int8), TypeError, "dtype"),
        (lambda: fastpath.pack(f, "abc", (16, 64)), ValueError, "boxes"),
    ]
    for fn, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            fn()
    assert fastpath.pack(f, np.zeros((0, 4)), (16, 64)).shape == (0, 3, 16, 64)


@needs_c
def test_c_rechecks_buffers_itself():
    """Called directly with inconsistent sizes, the extension raises instead of reading out of bounds."""
    f = np.zeros((10, 10, 3), np.uint8)
    out = np.zeros((1, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="buffer sizes"):
        _native.pack_boxes(f, 100, 100, np.array([0, 0, 5, 5.0]), 1, out, 4, 4, [0.5] * 3, [0.5] * 3, 1, 0, 0.0, 0)
    with pytest.raises(ValueError, match="box 0"):
        _native.pack_boxes(f, 10, 10, np.array([0, 0, 50, 5.0]), 1, out, 4, 4, [0.5] * 3, [0.5] * 3, 1, 0, 0.0, 0)
    with pytest.raises(ValueError):
        _native.pack_boxes(f[:, ::2], 10, 5, np.array([0, 0, 5, 5.0]), 1, out, 4, 4, [0.5] * 3, [0.5] * 3, 1, 0, 0.0, 0)
    p = np.zeros((1, 2, 3), np.float32)
    with pytest.raises(ValueError, match="buffer sizes"):
        _native.decode(p, 2, 2, 3, 0, 0, np.zeros((2, 2), np.int32), np.zeros((2, 2), np.float32),
                       np.zeros(2, np.int32), np.zeros(2))


def test_near_zero_height_box_keeps_aspect_on_both_paths():
    """A box 1e-71 px high asks for a width far beyond INT_MAX: both paths clamp it to the output width (the C
    side once cast it first, which is undefined, and padded instead)."""
    frame = np.random.default_rng(0).integers(0, 256, (1, 1, 3), np.uint8)
    results = _on_every_path(lambda: fastpath.pack(frame, [[0.0, 0.0, 1.0, 3.4e-71]], (1, 2), keep_aspect=True))
    for r in results:
        assert not isinstance(r, str), r
        assert np.array_equal(r[..., 0], r[..., 1])  # the pixel fills the full width, no padding column
    assert all(np.array_equal(r, results[0]) for r in results[1:])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=st.integers(1, 60), w=st.integers(1, 90), oh=st.integers(1, 40), ow=st.integers(1, 80),
       box=st.tuples(*[st.floats(-30, 120, allow_nan=False)] * 4), seed=st.integers(0, 1000), keep=st.booleans())
def test_property_random_frames_and_boxes(h, w, oh, ow, box, seed, keep):
    """Any frame and any box: either a clean ValueError or a finite batch, and both paths agree."""
    frame = np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)
    results = _on_every_path(lambda: fastpath.pack(frame, [list(box)], (oh, ow), keep_aspect=keep))
    if isinstance(results[0], str):
        assert all(r == results[0] for r in results)
        return
    assert np.isfinite(results[0]).all() and results[0].min() >= -1 - 1e-6 and results[0].max() <= 1 + 1e-6
    for r in results[1:]:
        assert np.abs(r - results[0]).max() <= 1 / 127.5 + 1e-4


@settings(max_examples=40, deadline=None)
@given(quad=st.lists(st.floats(-20, 80, allow_nan=False), min_size=8, max_size=8), seed=st.integers(0, 100))
def test_property_random_quads(quad, seed):
    frame = np.random.default_rng(seed).integers(0, 256, (40, 60, 3), np.uint8)
    q = np.array(quad).reshape(1, 4, 2)
    results = _on_every_path(lambda: fastpath.pack(frame, q, (8, 32)))
    if isinstance(results[0], str):
        assert all(r == results[0] for r in results)
    else:
        assert np.isfinite(results[0]).all()
        for r in results[1:]:
            assert np.abs(r - results[0]).max() <= 1 / 127.5 + 1e-4


def _reference_ctc(probs, blank=0):
    """The decoding rule written plainly (as the tokenizer had it before the fast path)."""
    out = []
    for row in probs:
        ids, best = row.argmax(-1), row.max(-1)
        chars, confs, prev = [], [], -1
        for i, p in zip(ids.tolist(), best.tolist()):
            if i != blank:
                if i != prev:
                    chars.append(i)
                    confs.append(p)
                else:
                    confs[-1] = max(confs[-1], p)
            prev = i
        seq = float(np.prod(confs, dtype=np.float64)) if confs else float(best.min(initial=1.0))
        out.append((chars, confs, seq))
    return out


@pytest.mark.parametrize("kind", ["ctc", "eos"])
def test_decode_exact_against_the_reference_and_across_paths(impl, kind):
    rng = np.random.default_rng(3)
    p = rng.random((50, 12, 7)).astype(np.float32) ** 4
    p[:, ::3, 0] += 2.0  # plenty of blanks / early EOS
    p /= p.sum(-1, keepdims=True)
    d = fastpath.decode(p, kind, 0)
    if kind == "ctc":
        for n, (chars, confs, seq) in enumerate(_reference_ctc(p)):
            k = d.lengths[n]
            assert d.ids[n, :k].tolist() == chars and d.conf[n, :k].tolist() == confs and d.seq_conf[n] == seq
    else:
        ids = p.argmax(-1)
        for n in range(len(p)):
            eos = np.flatnonzero(ids[n] == 0)
            end = int(eos[0]) if eos.size else 12
            assert d.ids[n, : d.lengths[n]].tolist() == ids[n, :end].tolist()
    if _native is not None:
        q, c = _on_every_path(lambda: fastpath.decode(p, kind, 0))
        for a, b in zip(c, q):
            assert np.array_equal(a, b)


def test_decode_hostile_inputs(impl):
    with pytest.raises(ValueError, match="NaN"):
        fastpath.decode(np.full((2, 3, 4), np.nan, np.float32), "ctc")
    with pytest.raises(ValueError, match="\\(N, T, C\\)"):
        fastpath.decode(np.zeros((3, 4), np.float32), "ctc")
    with pytest.raises(TypeError, match="dtype"):
        fastpath.decode(np.zeros((1, 3, 4), np.int32), "ctc")
    with pytest.raises(ValueError, match="special"):
        fastpath.decode(np.zeros((1, 3, 4), np.float32), "ctc", 9)
    with pytest.raises(ValueError, match="kind"):
        fastpath.decode(np.zeros((1, 3, 4), np.float32), "beam")
    # non-contiguous and float64 inputs are accepted (converted once)
    p = np.random.default_rng(0).random((4, 6, 5))
    a = fastpath.decode(p[:, ::-1], "ctc")
    b = fastpath.decode(np.ascontiguousarray(p[:, ::-1], dtype=np.float32), "ctc")
    assert np.array_equal(a.ids, b.ids)
    assert fastpath.decode(np.zeros((0, 5, 3), np.float32), "ctc").lengths.shape == (0,)
