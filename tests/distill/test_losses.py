import pytest
import torch

from distill import losses as L


def test_visual_focus():
    f = torch.randn(2, 16, 8, 32)
    assert L.visual_focus_loss(f, f).item() == pytest.approx(0.0, abs=1e-5)
    # z-scoring per channel: a per-channel affine change of the teacher's features costs nothing
    g = f * torch.rand(1, 16, 1, 1).add(0.5) + torch.randn(1, 16, 1, 1)
    assert L.visual_focus_loss(g, f).item() == pytest.approx(0.0, abs=1e-4)
    assert L.visual_focus_loss(torch.randn_like(f), f).item() > 0.5
    # the mask decides where it counts
    s = f.clone()
    s[..., :16] = torch.randn(2, 16, 8, 16)
    mask = torch.zeros(2, 8, 32)
    mask[..., 16:] = 1
    assert L.visual_focus_loss(s, f, mask.flatten(1)).item() < 0.2 < L.visual_focus_loss(s, f).item()
    with pytest.raises(ValueError, match="grid"):
        L.visual_focus_loss(torch.randn(2, 16, 4, 16), f)


def test_attention_mask_uses_valid_steps_only():
    attn = torch.zeros(1, 3, 2, 2)
    attn[0, 0, 0, 0] = 1.0
    attn[0, 2, 1, 1] = 1.0  # a step after EOS: ignored
    m = L.attention_mask(attn, torch.tensor([[True, True, False]]))
    assert m.tolist() == [[1.0, 0.0, 0.0, 0.0]]


def test_ctc_focus_mask_follows_the_teachers_character_frames():
    logits = torch.full((1, 8, 5), -10.0)
    logits[..., 0] = 10.0  # blank everywhere ...
    logits[0, 2, 0], logits[0, 2, 3] = -10.0, 10.0  # ... except one character at frame 2
    logits[0, 6, 0], logits[0, 6, 4] = 0.0, 0.0  # and an even split at frame 6
    assert L.ctc_char_frames(logits).tolist() == [[False, False, True, False, False, False, False, False]]
    m = L.ctc_focus_mask(logits, rows=2, spread=1)
    assert m.shape == (1, 16) and m[0, 2] == 1.0 and m[0, 10] == 1.0  # row 1 repeats row 0
    assert m[0, 6] == pytest.approx(0.5, abs=1e-3) and m[0, 0] < 1e-6
    # spread 3: the character's neighbours count too (its ink spans them), frame 4 stays out
    wide = L.ctc_focus_mask(logits, rows=1, spread=3)[0]
    assert wide[1] == wide[3] == 1.0 and wide[4] < 1e-6 and wide[5] == pytest.approx(0.5, abs=1e-3)
    # as the visual focus weights: a wrong feature costs far more at the character's column than at a blank one
    torch.manual_seed(0)
    f = torch.randn(1, 16, 2, 8)
    at_blank, at_char = f.clone(), f.clone()
    at_blank[..., 0] = f[..., 0] + 3 * torch.randn(1, 16, 2)
    at_char[..., 2] = f[..., 2] + 3 * torch.randn(1, 16, 2)
    assert L.visual_focus_loss(at_blank, f, m).item() < 0.25 * L.visual_focus_loss(at_char, f, m).item()


def test_semantic_contrastive_prefers_aligned_characters():
    torch.manual_seed(0)
    proj = L.SemanticProjector(32)
    ft = torch.randn(4, 6, 32)
    valid = torch.ones(4, 6, dtype=torch.bool)
    valid[:, 4:] = False
    aligned = L.semantic_contrastive_loss(proj, ft + 0.01 * torch.randn_like(ft), ft, valid)
    shuffled = L.semantic_contrastive_loss(proj, ft[torch.randperm(4)], ft, valid)
    assert aligned < shuffled
    assert proj.rnn.hidden_size == 256 and proj.rnn.bidirectional


def test_beam_best_path_ends_at_eos():
    # step 0: a 0.6 / b 0.4; step 1: EOS 0.9 after anything; greedy = beam here, the path stops at EOS
    p = torch.tensor([[[0.0, 0.6, 0.4], [0.9, 0.05, 0.05], [0.2, 0.5, 0.3]]])
    path, prob = L.beam_best_path(p.log(), eos_id=0, width=3)
    assert path[0].tolist() == [1, 0, 0] and prob.item() == pytest.approx(0.54, rel=1e-4)
    # a path that has ended stays ended: its probability is not multiplied by later steps
    assert path[0, 2].item() == 0


def test_soft_logits_loss():
    t = torch.randn(3, 5, 11)
    valid = torch.ones(3, 5, dtype=torch.bool)
    assert L.soft_logits_loss(t, t, valid, alpha=0.0).item() == pytest.approx(0.0, abs=1e-5)
    s = torch.randn(3, 5, 11)
    plain = L.soft_logits_loss(s, t, valid, alpha=0.0).item()
    mixed = L.soft_logits_loss(s, t, valid, alpha=0.2, min_p=0.0).item()
    assert plain > 0 and mixed != pytest.approx(plain)
    # min_p above any path's probability disables the mixing
    assert L.soft_logits_loss(s, t, valid, alpha=0.2, min_p=1.1).item() == pytest.approx(plain, rel=1e-5)
    assert L.frame_kl_loss(t, t).item() == pytest.approx(0.0, abs=1e-5)


def test_ctc_and_ce():
    logits = torch.randn(2, 32, 37, requires_grad=True)
    loss = L.ctc_loss(logits, torch.tensor([1, 2, 3, 4]), torch.tensor([3, 1]))
    loss.backward()
    assert torch.isfinite(loss) and logits.grad.abs().sum() > 0
    s, n = L.ce_loss(torch.randn(2, 4, 10), torch.tensor([[1, 2, 0, 9], [3, 9, 9, 9]]), pad_id=9)
    assert int(n) == 4 and s.item() > 0


def test_kd_schedule_factor():
    assert [L.kd_schedule_factor("constant", s, 5) for s in range(5)] == [1.0] * 5
    assert [L.kd_schedule_factor("linear", s, 5) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    cos = [L.kd_schedule_factor("cosine", s, 5) for s in range(5)]
    assert cos[0] == 1.0 and cos[2] == pytest.approx(0.5) and cos[4] == pytest.approx(0.0, abs=1e-12)
    assert cos[1] > 0.75 and cos[3] < 0.25  # slower than linear at first, faster at the end
    assert L.kd_schedule_factor("cosine", 9, 5) == pytest.approx(0.0, abs=1e-12)  # past the end: stays off
    with pytest.raises(ValueError, match="kd_schedule"):
        L.kd_schedule_factor("step", 1, 5)
