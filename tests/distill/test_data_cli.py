"""distill.data info/pack/degrade and the torch dataset wrappers."""
import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import jpeg_bytes, png_bytes, run_module, str_items, write_lmdb
from distill.data import dataset_info, degrade_lmdb, main as data_main, pack_folder, views_lmdb
from distill.datasets import PairDataset, WeightedConcat, collate
from runtime.datasets import LabelPolicy, open_dataset


def test_info_json_on_real_set(shared_real):
    r = run_module(["distill.data", "info", str(shared_real / "svt_train"), "--json", "--no-progress"])
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["layout"] == "str" and info["kept"] == 257 and info["skipped_images"] == 0
    assert info["label_length"]["min"] == 3 and info["image_height"]["median"] > 20
    assert sum(info["label_length_histogram"].values()) == 257


def test_info_reports_skipped_keys(tmp_path, capsys):
    items = str_items(["a", "b", "c"])
    items[b"image-000000002"] = jpeg_bytes()[:100]
    p = write_lmdb(tmp_path / "x", items)
    info = dataset_info(p, progress=False)
    assert info.skipped_images == 1 and info.skipped_keys == ["image-000000002"] and info.kept == 3
    assert data_main(["info", str(p), "--no-progress"]) == 0
    assert "image-000000002" in capsys.readouterr().out
    assert data_main(["info", str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_pack_then_degrade_roundtrip(tmp_path):
    src = tmp_path / "folder"
    (src / "i").mkdir(parents=True)
    labels = ["Alpha", "beta", "GAMMA9"]
    lines = []
    for k, lb in enumerate(labels):
        (src / "i" / f"{k}.png").write_bytes(png_bytes(40, 120, seed=k))
        lines.append(f"i/{k}.png\t{lb}")
    (src / "i" / "bad.png").write_bytes(b"broken")
    lines.append("i/bad.png\tbad")
    (src / "labels.tsv").write_text("\n".join(lines) + "\n")

    n, skipped = pack_folder(src, tmp_path / "str", progress=False)
    assert n == 3 and len(skipped) == 1 and "bad.png" in skipped[0]
    r = open_dataset(tmp_path / "str")
    assert r.layout == "str" and r.labels == labels

    n2, _ = degrade_lmdb(tmp_path / "str", tmp_path / "tz", seed=3, progress=False)
    tz = open_dataset(tmp_path / "tz")
    assert tz.layout == "textzoom" and n2 == 3 and tz.labels == labels
    s = tz[0]
    assert s.image.shape == (40, 120, 3) and s.lr.shape[0] < 20
    # deterministic for a seed
    degrade_lmdb(tmp_path / "str", tmp_path / "tz2", seed=3, progress=False)
    assert np.array_equal(open_dataset(tmp_path / "tz2")[0].lr, s.lr)
    with pytest.raises(FileExistsError):
        degrade_lmdb(tmp_path / "str", tmp_path / "tz", seed=3, progress=False)


def test_degrade_cli_refuses_pairs(tmp_path):
    from conftest import textzoom_items

    p = write_lmdb(tmp_path / "tz", textzoom_items(["a"]))
    r = run_module(["distill.data", "degrade", str(p), str(tmp_path / "out")])
    assert r.returncode == 2 and "already a TextZoom-layout" in r.stderr
    assert not (tmp_path / "out").exists()


def test_a_view_never_cuts_the_word():
    """Ink 8 px from a wide crop's top and bottom and 10 from its ends: loosened, tightened, tilted or turned,
    the view keeps all of it inside (a dark pixel on the view's edge would be a cut character: the replicated
    border drags it out to the edge)."""
    from distill.augment import text_view

    img = np.full((40, 400, 3), 230, np.uint8)
    for x in range(10, 390, 24):  # "characters": dark bars with gaps
        img[8:32, x : x + 14] = 20
    heights, widths = [], []
    for seed in range(200):
        v = text_view(img, np.random.default_rng(seed))
        dark = v.min(axis=2) < 128
        edges = np.concatenate([dark[0], dark[-1], dark[:, 0], dark[:, -1]])
        assert not edges.any(), f"seed {seed}: the view cuts the word"
        heights.append(v.shape[0])
        widths.append(v.shape[1])
    assert min(heights) < 44 < max(heights) and min(widths) < 400 < max(widths)  # the views do vary


def test_views_cli_writes_copies_with_their_labels(tmp_path):
    a = write_lmdb(tmp_path / "a", str_items(["one", "Two"]))
    b = write_lmdb(tmp_path / "b", str_items(["three"]))
    assert data_main(["views", str(a), str(b), str(tmp_path / "v"), "--copies", "3", "--no-progress"]) == 0
    v = open_dataset(tmp_path / "v")
    assert v.layout == "str" and v.labels == ["one"] * 3 + ["Two"] * 3 + ["three"] * 3
    assert not np.array_equal(v[0].image, v[1].image)  # three different views of one crop
    n, _ = views_lmdb([a, b], tmp_path / "v2", copies=3, seed=0, progress=False)  # the same for a seed
    assert n == 9 and all(np.array_equal(v[i].image, open_dataset(tmp_path / "v2")[i].image) for i in range(9))
    views_lmdb([a, b], tmp_path / "v3", copies=3, seed=1, progress=False)
    assert not np.array_equal(v[0].image, open_dataset(tmp_path / "v3")[0].image)


def test_views_cli_refuses_pairs_and_a_bad_count(tmp_path):
    from conftest import textzoom_items

    tz = write_lmdb(tmp_path / "tz", textzoom_items(["a"]))
    r = run_module(["distill.data", "views", str(tz), str(tmp_path / "out")])
    assert r.returncode == 2 and "TextZoom-layout" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    a = write_lmdb(tmp_path / "a", str_items(["one"]))
    r = run_module(["distill.data", "views", str(a), str(tmp_path / "out"), "--copies", "0"])
    assert r.returncode == 2 and "--copies" in r.stderr and not (tmp_path / "out").exists()


def test_pair_dataset_skips_corrupt_images_in_worker_processes(tmp_path):
    items = str_items([f"w{i}" for i in range(12)])
    items[b"image-000000005"] = jpeg_bytes()[:120]
    ds = PairDataset(str(write_lmdb(tmp_path / "s", items)), seed=1)
    assert ds.lr_mode == "degrade"
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert sum(len(b["label"]) for b in batches) == 12
    b = batches[0]
    assert b["hr"].shape == (4, 3, 32, 128) and b["lr"].shape == (4, 3, 16, 64)
    assert b["hr"].min() >= -1 and b["hr"].max() <= 1
    labels = [lb for b in batches for lb in b["label"]]
    assert "w4" not in labels and labels.count("w5") == 2  # the bad sample was replaced by its neighbour


def test_lr_changes_per_epoch_but_is_reproducible(tmp_path):
    p = write_lmdb(tmp_path / "s", str_items(["abc"]))
    ds = PairDataset(str(p), seed=1)
    a = ds[0]["lr"]
    assert torch.equal(a, PairDataset(str(p), seed=1)[0]["lr"])
    ds.set_epoch(1)
    assert not torch.equal(a, ds[0]["lr"])


def test_clean_share_gives_the_plain_area_resized_crop(tmp_path):
    from conftest import textzoom_items
    from distill.datasets import image_to_tensor
    from runtime.conditions import apply_condition
    from runtime.preprocess import LR_SIZE

    p = write_lmdb(tmp_path / "s", str_items([f"w{i}" for i in range(40)]))
    chain, plain, half = (PairDataset(str(p), seed=3, clean=c) for c in (0.0, 1.0, 0.5))
    assert torch.equal(chain[0]["lr"], PairDataset(str(p), seed=3)[0]["lr"])  # clean 0: the samples of before
    plain_lr = [image_to_tensor(apply_condition("lr16", chain.reader[i].image), LR_SIZE) for i in range(40)]
    assert all(torch.equal(plain[i]["lr"], plain_lr[i]) for i in range(40))  # the benchmarks' lr16, exactly
    n_plain = sum(torch.equal(half[i]["lr"], plain_lr[i]) for i in range(40))
    assert 8 <= n_plain <= 32  # about half, the rest through the camera chain
    assert torch.equal(half[5]["hr"], chain[5]["hr"])
    with pytest.raises(ValueError, match="tz.*lr_mode degrade"):
        PairDataset(str(write_lmdb(tmp_path / "tz", textzoom_items(["ab"]))), clean=0.3)
    with pytest.raises(ValueError, match=r"clean: expected a share in \[0, 1\]"):
        PairDataset(str(p), clean=1.5)


def test_at_lr_height_share_draws_the_chain_at_the_inputs_height(tmp_path):
    from distill.datasets import image_to_tensor
    from distill.degrade import degrade, strength_for
    from runtime.preprocess import LR_SIZE

    p = write_lmdb(tmp_path / "s", str_items([f"w{i}" for i in range(40)]))
    before, native, half = (PairDataset(str(p), seed=3, at_lr_height=a) for a in (0.0, 1.0, 0.5))
    assert all(torch.equal(before[i]["lr"], PairDataset(str(p), seed=3)[i]["lr"]) for i in range(5))

    def chain(i, lr_height):  # _load's draws for item i: strength first when at_lr_height is 0, else a coin first
        rng = np.random.default_rng([3, 0, i])
        if lr_height:
            rng.random()
        lr, _, _ = degrade(before.reader[i].image, rng, strength_for("mixed", rng), lr_height)
        return image_to_tensor(lr, LR_SIZE)

    assert all(torch.equal(native[i]["lr"], chain(i, LR_SIZE[0])) for i in range(5))
    assert not torch.equal(native[0]["lr"], before[0]["lr"])
    n_native = sum(torch.equal(half[i]["lr"], chain(i, LR_SIZE[0])) for i in range(40))
    assert 8 <= n_native <= 32
    with pytest.raises(ValueError, match=r"at_lr_height: expected a share in \[0, 1\]"):
        PairDataset(str(p), at_lr_height=-0.1)


def test_weighted_concat(tmp_path):
    a = PairDataset(str(write_lmdb(tmp_path / "a", str_items(["a"] * 5))))
    b = PairDataset(str(write_lmdb(tmp_path / "b", str_items(["b"] * 50))))
    wc = WeightedConcat([a, b], weights=[3, 1], length=400, seed=0)
    labels = [wc[i]["label"] for i in range(400)]
    assert 0.65 < labels.count("a") / 400 < 0.85
    first = wc._which.copy()
    wc.set_epoch(1)
    assert not np.array_equal(first, wc._which)
    with pytest.raises(ValueError, match="weights"):
        WeightedConcat([a, b], weights=[1])


def test_split_holds_out_a_seeded_part_and_keeps_everything_else(tmp_path, shared_real):
    from distill.data import main, split_lmdb

    a = split_lmdb(shared_real / "svt_train", tmp_path / "a", 57, seed=3)
    assert a == (200, 57)
    src = open_dataset(shared_real / "svt_train", LabelPolicy(max_len=0))
    tr = open_dataset(tmp_path / "a" / "train", LabelPolicy(max_len=0))
    ho = open_dataset(tmp_path / "a" / "heldout", LabelPolicy(max_len=0))
    assert sorted(tr.raw_labels + ho.raw_labels) == sorted(src.raw_labels)  # nothing lost, nothing twice
    split_lmdb(shared_real / "svt_train", tmp_path / "b", 57, seed=3)
    assert open_dataset(tmp_path / "b" / "heldout", LabelPolicy(max_len=0)).raw_labels == ho.raw_labels  # reproducible
    assert main(["split", str(shared_real / "svt_train"), str(tmp_path / "a"), "--held-out", "5"]) == 2  # exists
    assert main(["split", str(shared_real / "svt_train"), str(tmp_path / "c"), "--held-out", "257"]) == 2
    assert not (tmp_path / "c").exists()
