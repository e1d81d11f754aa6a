import pytest
import torch

from distill.models import MODELS, build_model, gen_tgt_perms, load_official_parseq, make_student, model_spec

TINY = {
    "parseq-tiny": dict(depth=2, dim=48, heads=2, dec_heads=2),
    "cnn-attn": dict(widths=[8, 8, 16, 16, 16]),
    "cnn-ctc": dict(widths=[8, 8, 16, 16, 16], hidden=32),
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_forward_shapes_batch_1_and_many_and_student_grid(name):
    torch.manual_seed(0)
    spec = model_spec(name, "36", 10, lr=False, **TINY[name])
    teacher = build_model(spec).eval()
    sspec, student, skipped = make_student(spec, teacher.state_dict())
    student.eval()
    assert tuple(student.img_size) == (16, 64) and tuple(teacher.img_size) == (32, 128)
    n_out = 37 if spec["tokenizer"] == "ctc" else 37  # ctc: blank + 36; attn: EOS + 36
    for B in (1, 3):
        p = teacher(torch.randn(B, 3, 32, 128))
        assert p.shape[0] == B and p.shape[-1] == n_out
        assert torch.allclose(p.sum(-1), torch.ones(p.shape[:2]), atol=1e-4)
        q = student(torch.randn(B, 3, 16, 64))
        assert q.shape == p.shape
    # same feature grid: the visual focus loss compares them position by position
    x_hr, x_lr = torch.randn(2, 3, 32, 128), torch.randn(2, 3, 16, 64)
    tgt = torch.tensor([[37, 1, 2, 0, 38], [37, 3, 0, 38, 38]])  # BOS=37 chars EOS=0 PAD=38
    assert teacher.forward_train(x_hr, tgt).visual.shape == student.forward_train(x_lr, tgt).visual.shape
    if name.startswith("parseq"):
        assert skipped == ["encoder.patch_embed.proj.weight"]
    else:
        assert skipped == []  # halving a stride changes no parameter shape
        assert torch.equal(student.state_dict()["backbone.stem.0.weight"], teacher.state_dict()["backbone.stem.0.weight"])


def test_parseq_early_stop_matches_full_unrolled_decoding():
    torch.manual_seed(1)
    m = build_model(model_spec("parseq-tiny", "36", 8, **TINY["parseq-tiny"])).eval()
    x = torch.randn(4, 3, 32, 128)
    with torch.no_grad():
        full = m.decode_logits(x, early_stop=False).argmax(-1)
        fast = m.decode_logits(x, early_stop=True).argmax(-1)
    for a, b in zip(full, fast):
        end = int((a == 0).nonzero()[0]) if (a == 0).any() else len(a)
        assert torch.equal(a[:end + 1], b[:end + 1])


def test_gen_tgt_perms():
    g = torch.Generator().manual_seed(0)
    p = gen_tgt_perms(7, 6, g)
    assert p.shape == (6, 9)
    assert p[0].tolist() == list(range(9))  # canonical
    assert p[1].tolist() == [0] + list(range(8, 0, -1))  # reverse, EOS (8) still predicted
    assert all(sorted(r.tolist()) == list(range(9)) for r in p)
    assert gen_tgt_perms(1, 6).tolist() == [[0, 1, 2]]


def test_official_parseq_key_layout_loads_and_mismatch_is_clear(tmp_path):
    spec = model_spec("parseq-small", "94", 25)
    ref = build_model(spec)
    # the release stores the PARSeq module under "model." inside a Lightning-style dict
    sd = {"model." + k: v for k, v in ref.state_dict().items()}
    path = tmp_path / "parseq-small.pt"
    torch.save({"state_dict": sd}, path)
    _, m = load_official_parseq(str(path))
    assert torch.equal(m.head.weight, ref.head.weight) and m.head.out_features == 95
    assert "encoder.blocks.11.attn.qkv.weight" in m.state_dict() and "text_embed.embedding.weight" in m.state_dict()
    bad = dict(sd)
    del bad["model.pos_queries"]
    bad["model.head.weight"] = torch.zeros(10, 384)
    with pytest.raises(ValueError, match="missing .*pos_queries") as e:
        load_official_parseq({"state_dict": bad})
    assert "shape head.weight: checkpoint (10, 384) vs model (95, 384)" in str(e.value)


def test_registry_and_spec_errors():
    assert {"parseq-tiny", "parseq-small", "cnn-attn", "cnn-ctc"} <= set(MODELS)
    with pytest.raises(ValueError, match="unknown name"):
        model_spec("resnet-9000")
    with pytest.raises(ValueError, match="no argument"):
        model_spec("cnn-ctc", depth=3)
