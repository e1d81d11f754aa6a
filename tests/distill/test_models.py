import pytest
import torch

from distill.models import MODELS, build_model, gen_tgt_perms, load_official_parseq, make_student, model_spec
from distill.models.parseq import PARSeq, perm_masks

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


def test_perm_masks_let_each_position_see_what_its_permutation_reads_before_it():
    g = torch.Generator().manual_seed(1)
    for perm in gen_tgt_perms(7, 6, g):
        content, query = perm_masks(perm)
        order = {int(p): i for i, p in enumerate(perm)}
        for a in range(8):  # content stream: a sees itself and what comes before it
            seen = {b for b in range(8) if content[a, b] == 0}
            assert seen == {b for b in range(8) if order[b] <= order[a]}, (perm.tolist(), a)
        for q in range(8):  # query of position q + 1: what comes strictly before it, never itself
            seen = {b for b in range(8) if query[q, b] == 0}
            assert seen == {b for b in range(8) if order[b] < order[q + 1]}, (perm.tolist(), q)
        assert torch.isinf(content).sum() + (content == 0).sum() == content.numel()


def test_parseq_training_decodes_all_permutations_in_one_pass_as_one_at_a_time():
    torch.manual_seed(0)
    m = PARSeq(38, max_len=12, dim=32, depth=1, heads=2, dec_heads=2, dec_depth=2, class_token=True).eval()
    x, tgt = torch.randn(3, 3, 32, 128), torch.randint(1, 36, (3, 14))  # characters: not EOS, BOS, PAD
    tgt[:, 0], tgt[:, 6], tgt[:, 7:] = m.bos_id, m.eos_id, m.pad_id
    perms = gen_tgt_perms(12, 6, torch.Generator().manual_seed(0))
    out = m.forward_train(x, tgt, perms, enc_taps=(1,))
    memory = m.encode(x)
    pad = torch.zeros(tgt[:, :-1].shape).masked_fill((tgt[:, :-1] == m.pad_id) | (tgt[:, :-1] == m.eos_id),
                                                     float("-inf"))
    for k, perm in enumerate(perms):
        content, query = perm_masks(perm)
        taps = []
        ref = m.decode(tgt[:, :-1], memory, content, pad, query_mask=query, taps=taps if k == 0 else None)
        assert torch.allclose(out.logits[k], m.head(ref), atol=1e-5), k
        if k == 0:
            assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(out.extra["dec"], taps, strict=True))
    assert (out.targets[0] == m.eos_id).any() and not (out.targets[2] == m.eos_id).any()


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
