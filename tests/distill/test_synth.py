"""distill.synth: layout, a foreign reader, determinism, split sizes, preview."""
import io
import json

import lmdb
import numpy as np
import pytest
from PIL import Image

from conftest import run_module
from distill.synth import FontBank, WordSampler, find_fonts, parse_split_sizes, render_word
from distill.synth.generate import main as synth_main
from runtime.charset import CHARSETS

SPLITS = ["train", "val", "test/easy", "test/medium", "test/hard"]


def _dump(path):
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        out = dict(txn.cursor())
    env.close()
    return out


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    assert synth_main(["--out", str(out), "--n", "200", "--seed", "5", "--workers", "2", "--no-progress",
                       "--preview", str(out / "preview.png")]) == 0
    return out


def test_layout_readable_by_plain_lmdb_and_pil(synth_dir):
    meta = json.loads((synth_dir / "synth.json").read_text())
    total = 0
    for split in SPLITS:
        d = _dump(synth_dir / split)
        n = int(d[b"num-samples"])
        total += n
        assert n > 0
        assert set(d) == {b"num-samples"} | {b"%s-%09d" % (k, i) for i in range(1, n + 1)
                                             for k in (b"image_hr", b"image_lr", b"label")}
        for i in (1, n):
            hr = Image.open(io.BytesIO(d[b"image_hr-%09d" % i])).convert("RGB")
            lr = Image.open(io.BytesIO(d[b"image_lr-%09d" % i])).convert("RGB")
            # LR is HR downscaled by 2..4, like TextZoom's pairs
            assert 1.5 <= hr.height / lr.height <= 4.5, (hr.size, lr.size)
            label = d[b"label-%09d" % i].decode("utf-8")
            assert label and all(c in CHARSETS["94"] for c in label)
        assert not (synth_dir / split / "lock.mdb").exists()
    assert total == 200 and meta["split_sizes"]["train"] == 160
    assert meta["pairs_per_second"] > 0


def test_preview_written(synth_dir):
    im = Image.open(synth_dir / "preview.png")
    assert im.width > 500 and im.height > 100
    assert np.asarray(im).std() > 10  # not a blank sheet


def test_same_seed_same_bytes_whatever_the_workers(tmp_path, synth_dir):
    out = tmp_path / "again"
    synth_main(["--out", str(out), "--n", "200", "--seed", "5", "--workers", "1", "--no-progress"])
    for split in SPLITS:
        assert _dump(out / split) == _dump(synth_dir / split), split
    other = tmp_path / "other"
    synth_main(["--out", str(other), "--n", "200", "--seed", "6", "--workers", "1", "--no-progress",
                "--split-sizes", "val=10"])
    assert _dump(other / "val") != _dump(synth_dir / "val")


def test_refuses_to_overwrite_and_cli_prints_rate(tmp_path):
    r = run_module(["distill.synth", "--out", str(tmp_path), "--n", "30", "--split-sizes", "train=20,test=10",
                    "--no-progress"])
    assert r.returncode == 0, r.stderr
    assert "pairs/s" in r.stdout
    assert (tmp_path / "test" / "hard" / "data.mdb").exists()
    r2 = run_module(["distill.synth", "--out", str(tmp_path), "--n", "30", "--split-sizes", "train=20"])
    assert r2.returncode != 0 and "already exist" in r2.stderr


def test_parse_split_sizes():
    s = parse_split_sizes("train=0.8,val=0.05,test=0.15", 1000)
    assert s["train"] == 800 and s["val"] == 50 and s["easy"] + s["medium"] + s["hard"] == 150
    assert s["easy"] > s["medium"] > s["hard"]  # TextZoom's proportions
    assert parse_split_sizes("train=1.0", 40) == {"train": 40}
    assert parse_split_sizes("hard=7", 40) == {"hard": 7}
    for bad in ("train", "foo=1", "train=-1", "train=0.5,val=3", "train=abc"):
        with pytest.raises(ValueError, match="--split-sizes"):
            parse_split_sizes(bad, 10)


def test_word_sampler_respects_charset_and_lengths():
    rng = np.random.default_rng(0)
    ws = WordSampler(charset="36", min_len=3, max_len=6)
    words = [ws.sample(rng) for _ in range(300)]
    assert all(3 <= len(w) <= 6 and set(w) <= set(CHARSETS["36"]) for w in words)
    kinds = WordSampler(charset="94")
    more = [kinds.sample(rng) for _ in range(500)]
    assert any(w.isalpha() and w.lower() == w for w in more)  # dictionary words
    assert any(any(c.isdigit() for c in w) for w in more)  # numbers / codes
    assert len(set(more)) > 300
    with pytest.raises(ValueError):
        WordSampler(min_len=5, max_len=2)


def test_fonts_found_and_builtin_fallback():
    fonts = find_fonts()
    assert fonts, "setup installs Debian font packages; none found"
    rng = np.random.default_rng(1)
    img = render_word("Shelf42", rng, FontBank(fonts[:3]))
    assert img.dtype == np.uint8 and img.shape[2] == 3 and 20 <= img.shape[0] <= 120 and img.shape[1] > img.shape[0]
    fb = FontBank([])  # nothing usable -> Pillow's built-in scalable font
    assert fb.fallback
    img2 = render_word("Shelf42", rng, fb)
    assert img2.std() > 5
