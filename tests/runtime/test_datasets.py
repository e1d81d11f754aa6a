"""Readers on every shared real set and on hostile inputs."""

import numpy as np
import pytest

from conftest import jpeg_bytes, png_bytes, str_items, textzoom_items, write_lmdb
from runtime.datasets import (
    CorruptSample,
    DataError,
    ImageFolderReader,
    LabelPolicy,
    STRLmdbReader,
    TextZoomReader,
    detect_layout,
    open_dataset,
)

REAL_COUNTS = {"iiit5k_train": 2000, "svt_train": 257, "svt_test": 647, "vn_plates_valid": 920, "demo_words": 16,
               "ic15_train": 4468}


@pytest.mark.parametrize("name,count", sorted(REAL_COUNTS.items()))
def test_every_real_set_reads(shared_real, name, count):
    r = open_dataset(shared_real / name)
    assert r.layout == ("folder" if name == "demo_words" else "str")
    assert r.stats.total == count and len(r) == count
    n = 0
    for s in r.iter_valid():
        assert s.image.dtype == np.uint8 and s.image.ndim == 3 and s.image.shape[2] == 3
        assert s.label
        n += 1
        if n >= 50:
            break
    assert r.stats.skipped_images == []


def test_all_real_sets_are_covered(shared_real):
    # A new set in shared/ must be added to REAL_COUNTS (and so be read by the test above).
    assert {p.name for p in shared_real.iterdir() if p.is_dir()} == set(REAL_COUNTS)


def test_textzoom_normalisation_on_real_labels(shared_real):
    r = open_dataset(shared_real / "svt_test", LabelPolicy(normalize="textzoom"))
    assert all(lb == lb.lower() and lb.isalnum() for lb in r.labels)


def test_textzoom_layout_and_sizes(tmp_path):
    p = write_lmdb(tmp_path / "tz", textzoom_items(["Abc", "de-f"], hr=(40, 150), lr=(12, 50)))
    assert detect_layout(p) == "textzoom"
    r = open_dataset(p)
    assert isinstance(r, TextZoomReader) and len(r) == 2
    s = r[1]
    assert s.image.shape == (40, 150, 3) and s.lr.shape == (12, 50, 3) and s.label == "de-f"
    assert s.key == "000000002"


def test_truncated_and_missing_images_are_skipped_with_keys(tmp_path):
    items = str_items(["one", "two", "three", "four"])
    items[b"image-000000002"] = jpeg_bytes()[:150]  # truncated JPEG
    del items[b"image-000000003"]
    items[b"image-000000004"] = b"not an image at all"
    r = open_dataset(write_lmdb(tmp_path / "bad", items))
    got = [s.label for s in r.iter_valid()]
    assert got == ["one"]
    assert r.stats.skipped_images == ["image-000000002", "image-000000003", "image-000000004"]
    with pytest.raises(CorruptSample, match="image-000000003"):
        r[2]


def test_non_utf8_missing_empty_and_long_labels_are_filtered_and_counted(tmp_path):
    items = str_items(["ok", "x", "y", "!!!", "a" * 30])
    items[b"label-000000002"] = b"\xff\xfe\xfa"
    del items[b"label-000000003"]
    r = open_dataset(write_lmdb(tmp_path / "labels", items), LabelPolicy(normalize="textzoom", max_len=25))
    assert r.labels == ["ok"]
    assert r.stats.bad_labels == ["label-000000002 (not UTF-8)", "label-000000003 (missing)"]
    assert r.stats.filtered_empty == 1 and r.stats.filtered_too_long == 1
    assert r.stats.total == 5 and r.stats.kept == 1


def test_clear_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match="no such directory"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no data.mdb"):
        open_dataset(tmp_path / "empty")
    p = write_lmdb(tmp_path / "nonum", {b"image-000000001": png_bytes(), b"label-000000001": b"a"})
    with pytest.raises(DataError, match=r"nonum: lmdb has no 'num-samples' key"):
        open_dataset(p)
    p = write_lmdb(tmp_path / "weird", {b"num-samples": b"2", b"img-1": png_bytes(), b"lab-1": b"a"})
    with pytest.raises(DataError, match=r"weird: unknown lmdb layout"):
        open_dataset(p)
    p = write_lmdb(tmp_path / "badnum", {b"num-samples": b"lots"})
    with pytest.raises(DataError, match="not an integer"):
        open_dataset(p)


def test_reads_from_read_only_folder_without_lock_file(tmp_path):
    p = write_lmdb(tmp_path / "ro", str_items(["abc"]))
    assert not (p / "lock.mdb").exists()
    p.chmod(0o555)
    try:
        r = open_dataset(p)
        assert r[0].label == "abc"
        assert not (p / "lock.mdb").exists()
    finally:
        p.chmod(0o755)


def test_image_folder_reader(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(png_bytes())
    (tmp_path / "imgs" / "b.jpg").write_bytes(b"garbage")
    (tmp_path / "labels.tsv").write_bytes(b"imgs/a.png\tHello\nimgs/b.jpg\tWorld\nno-tab-line\nimgs/c.png\tGone\n")
    r = open_dataset(tmp_path)
    assert isinstance(r, ImageFolderReader)
    assert r.labels == ["Hello", "World", "Gone"] and r.stats.bad_labels == ["labels.tsv:3 (no TAB)"]
    assert [s.label for s in r.iter_valid()] == ["Hello"]
    assert r.stats.skipped_images == ["imgs/b.jpg", "imgs/c.png"]


def test_str_reader_type_and_repr(tmp_path):
    r = open_dataset(write_lmdb(tmp_path / "s", str_items(["a", "b"])))
    assert isinstance(r, STRLmdbReader) and "2 samples" in repr(r)
