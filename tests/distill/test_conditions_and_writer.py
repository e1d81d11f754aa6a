import numpy as np
import pytest

from distill.degrade import LEVELS, degrade
from distill.lmdb_writer import LmdbWriter
from runtime.conditions import apply_condition
from runtime.datasets import open_dataset


def _img(h=48, w=160, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_named_conditions_are_deterministic_and_sized():
    img = _img()
    a, b = apply_condition("lr16blur", img), apply_condition("lr16blur", img)
    assert a.shape == (16, 64, 3) and np.array_equal(a, b)
    plain = apply_condition("lr16", img)
    assert plain.shape == (16, 64, 3) and not np.array_equal(plain, a)
    assert apply_condition("hr", img) is img
    jpeg = apply_condition("lr16jpeg", img)  # the codec without the optics: lr16blur less its blur
    assert jpeg.shape == (16, 64, 3) and not np.array_equal(jpeg, plain) and not np.array_equal(jpeg, a)
    assert np.abs(jpeg.astype(int) - plain).mean() < np.abs(a.astype(int) - plain).mean()
    with pytest.raises(ValueError, match="unknown LR condition"):
        apply_condition("lr8", img)
    with pytest.raises(ValueError, match="RGB uint8"):
        apply_condition("lr16", img.astype(np.float32))


def test_degradation_gets_stronger_with_level():
    img = np.zeros((40, 160, 3), np.uint8)
    img[:, ::8] = 255  # fine stripes: blur and downscaling wash them out
    def detail(level):
        vals = []
        for k in range(20):
            rng = np.random.default_rng(k)
            lo, hi = LEVELS[level]
            lr, jpeg, info = degrade(img, rng, (lo + hi) / 2)
            assert jpeg[:2] == b"\xff\xd8" and 1.9 <= info.scale <= 4.1
            vals.append(info.scale)
        return np.mean(vals)
    assert detail("easy") < detail("medium") < detail("hard")


def test_the_chain_can_land_the_word_at_the_networks_height():
    import cv2

    for h, w in ((20, 70), (50, 160), (200, 600)):
        img = _img(h, w)
        for k in range(10):
            lr, jpeg, info = degrade(img, np.random.default_rng(k), 0.5, lr_height=16)
            assert 12 <= lr.shape[0] <= 20 and abs(lr.shape[1] / lr.shape[0] - w / h) < 0.35  # aspect kept
            assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == lr.shape  # codec at LR
        sampled = degrade(img, np.random.default_rng(0), 0.5)[0]  # by default: 2-4x below the crop's own size
        assert h / 4.2 <= sampled.shape[0] <= h / 1.9
    a = degrade(_img(), np.random.default_rng(3), 0.5)[0]
    assert np.array_equal(a, degrade(_img(), np.random.default_rng(3), 0.5, lr_height=0)[0])


def test_writer_is_atomic(tmp_path):
    out = tmp_path / "set"
    with pytest.raises(RuntimeError):
        with LmdbWriter(out) as w:
            w.put("image-000000001", b"x")
            raise RuntimeError("interrupted")
    assert not out.exists() and not list(tmp_path.iterdir())  # no half-written set, no temp left
    w = LmdbWriter(out, commit_every=2)
    for i in range(1, 6):
        w.put(b"image-%09d" % i, b"\x89PNG" + bytes(3000))
        w.put(b"label-%09d" % i, f"w{i}")
    w.finish(5)
    assert open_dataset(out).labels == [f"w{i}" for i in range(1, 6)]
    with pytest.raises(FileExistsError, match="already exists"):
        LmdbWriter(out)


def test_writer_grows_its_map(tmp_path):
    w = LmdbWriter(tmp_path / "big", commit_every=10_000, map_size=1 << 20)  # 4 MB of data into a 1 MB map
    for i in range(1, 41):
        w.put(b"image-%09d" % i, bytes(100_000))
        w.put(b"label-%09d" % i, "x")
    w.finish(40)
    assert len(open_dataset(tmp_path / "big")) == 40
