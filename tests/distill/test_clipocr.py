"""CLIP-OCR: OpenAI key layout, character tokens, the offline CLIP stage and the CLIP-OCR students."""
import pytest
import torch
from distill.clipocr import lcl_loss
from distill.config import ConfigError, load_config
from distill.models.clip import CLIP, EOT, SOT, char_token_id, char_tokens, load_openai_clip
from distill.train import train


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's byte-level alphabet, rebuilt from its published rules: printable bytes map to themselves (in the
    order '!'..'~', then '¡'..'¬', then '®'..'ÿ'), the remaining bytes to code points from 256 on."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))



def test_char_token_rule_matches_the_tokenizer_construction():
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]  # then 48894 merges, then the two specials
    n_merges = 49152 - 256 - 2
    assert len(vocab) + n_merges == SOT and SOT + 1 == EOT and EOT + 1 == 49408
    for code in range(33, 127):
        c = chr(code)
        # the tokenizer lowercases, and a one-character word is the single symbol 'c</w>'
        assert char_token_id(c) == vocab.index(c.lower() + "</w>"), c
    t = char_tokens(["Ab1", "x"], context=8)
    assert t[0].tolist() == [SOT, char_token_id("a"), char_token_id("b"), char_token_id("1"), EOT, 0, 0, 0]
    assert t[1, :3].tolist() == [SOT, char_token_id("x"), EOT]
    with pytest.raises(ValueError, match="printable"):
        char_token_id("é")



def test_tiny_vit_b16_shaped_model_roundtrips_through_openai_keys(tmp_path):
    torch.manual_seed(0)
    m = CLIP(embed_dim=32, image_resolution=224, vision_layers=2, vision_width=64, vision_patch=16, context_length=77,
             vocab_size=49408, text_width=64, text_heads=1, text_layers=2)
    sd = m.state_dict()
    for k in ("visual.class_embedding", "visual.positional_embedding", "visual.proj", "visual.conv1.weight",
              "visual.transformer.resblocks.0.attn.in_proj_weight", "visual.transformer.resblocks.1.mlp.c_fc.weight",
              "transformer.resblocks.0.ln_1.weight", "token_embedding.weight", "positional_embedding", "ln_final.weight",
              "text_projection", "logit_scale"):
        assert k in sd, k
    assert sd["visual.positional_embedding"].shape == (14 * 14 + 1, 64)
    sd = dict(sd, input_resolution=torch.tensor(224), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    torch.save(sd, tmp_path / "ViT-B-16.pt")
    m2 = load_openai_clip(str(tmp_path / "ViT-B-16.pt"))
    x = torch.randn(2, 3, 32, 128)
    tok = char_tokens(["word", "test"])
    with torch.no_grad():
        a, b = m.encode_image(x)[0], m2.encode_image(x)[0]
        assert torch.allclose(a, b) and torch.allclose(m.encode_text(tok)[0], m2.encode_text(tok)[0])
        _, taps = m2.encode_image(x, (1, 2))
    assert taps[2].shape == (2, 1 + 2 * 8, 64)  # class token + the 2x8 patch rows a 32x128 image covers
    bad = {k: v for k, v in sd.items() if k != "visual.proj"}
    with pytest.raises(ValueError, match="visual.proj"):
        load_openai_clip(bad)



def test_lcl_loss():
    f = torch.randn(3, 5, 16)
    same = lcl_loss(f, f)
    other = lcl_loss(torch.randn(3, 5, 16), f)
    assert same < other
    # the Gram term is zero for identical matrices: what is left is 0.1 * the InfoNCE of a perfect match
    assert same.item() < 0.1 * 1.0



@pytest.mark.parametrize("method", ["clipocr", "kdltr+clipocr"])
def test_clipocr_students_train(clip_setup, method):
    d, base = clip_setup
    out = d / method
    train(load_config("configs/clipocr_smoke.yaml", base + [
        "train.stage=student", f"distill.method={method}", f"train.teacher_ckpt={d / 'teacher' / 'last.pt'}",
        f"train.clip_ckpt={d / 'clip' / 'last.pt'}", f"train.out_dir={out}"]))
    log = (out / "log.csv").read_text()
    for part in ("sds_enc1=", "sds_dec3=", "word=", "ce="):
        assert part in log
    assert ("logits=" in log) == ("kdltr" in method)
    ck = torch.load(out / "last.pt", weights_only=False)
    assert ck["clip_heads"] is not None and ck["model_spec"]["lr"]



def test_clipocr_needs_class_token_and_clip(clip_setup):
    d, base = clip_setup
    with pytest.raises(ConfigError, match="train.clip_ckpt"):
        load_config("configs/clipocr_smoke.yaml", base + ["train.stage=student", "distill.method=clipocr",
                                                         "train.teacher_ckpt=x.pt"])
    cfg = load_config("configs/smoke.yaml", base + [f"train.out_dir={d / 'plain'}", "model.kwargs={depth: 1, dim: 32, heads: 2, dec_heads: 2}"])
    train(cfg)
    bad = load_config("configs/smoke.yaml", base + [
        "train.stage=student", "distill.method=clipocr", f"train.teacher_ckpt={d / 'plain' / 'last.pt'}",
        f"train.clip_ckpt={d / 'clip' / 'last.pt'}", f"train.out_dir={d / 'bad'}",
        "model.kwargs={depth: 1, dim: 32, heads: 2, dec_heads: 2}"])
    with pytest.raises(ConfigError, match="class token"):
        train(bad)
