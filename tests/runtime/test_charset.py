import numpy as np
import pytest

from runtime.charset import CHARSETS, AttnTokenizer, CTCTokenizer, OOVError, make_tokenizer, normalize_textzoom


def one_hot(ids, num_classes, p=0.9):
    out = np.full((len(ids), num_classes), (1 - p) / (num_classes - 1), np.float32)
    out[np.arange(len(ids)), ids] = p
    return out


def test_builtin_charsets():
    assert len(CHARSETS["36"]) == 36 and len(CHARSETS["62"]) == 62 and len(CHARSETS["94"]) == 94
    assert len(set(CHARSETS["94"])) == 94 and " " not in CHARSETS["94"]


def test_normalize_textzoom():
    assert normalize_textzoom("Hello, World-42!") == "helloworld42"
    assert normalize_textzoom("Ünïcode ß") == "ncode"
    assert normalize_textzoom("---") == ""


def test_attn_encode_layout_and_case_adapt():
    tok = AttnTokenizer("36")
    enc = tok.encode(["Ab1", "z"])
    assert enc.shape == (2, 5)
    assert enc[0, 0] == tok.bos_id and enc[0, 4] == tok.eos_id
    assert tok.decode_ids(enc[0, 1:]) == "ab1"  # upper-case adapted to the lower-case charset
    assert list(enc[1, 2:]) == [tok.eos_id, tok.pad_id, tok.pad_id]
    assert tok.num_output_classes == 37


def test_oov_drop_counts_and_error_raises():
    tok = AttnTokenizer("36", unknown="drop")
    assert tok.decode_ids(tok.encode(["a-b!"])[0, 1:]) == "ab"
    assert tok.oov_counts["-"] == 1 and tok.oov_counts["!"] == 1 and tok.oov_labels == 1
    strict = CTCTokenizer("62", unknown="error")
    with pytest.raises(OOVError, match="outside charset"):
        strict.encode(["ok", "bad$"])
    assert strict.oov_counts["$"] == 1


def test_attn_decode_cuts_at_eos_with_confidences():
    tok = AttnTokenizer("36")
    ids = [tok.stoi["c"], tok.stoi["a"], tok.stoi["t"], tok.eos_id, tok.stoi["x"]]
    probs = one_hot(ids, tok.num_output_classes, 0.8)[None]
    (d,) = tok.decode(probs)
    assert d.text == "cat"
    assert d.char_confidences == pytest.approx([0.8] * 3)
    assert d.confidence == pytest.approx(0.8 ** 4, rel=1e-5)  # EOS counts


def test_ctc_decode_collapses_repeats_and_blanks():
    tok = CTCTokenizer("36")
    b = tok.blank_id
    ids = [b, tok.stoi["l"], tok.stoi["l"], b, tok.stoi["l"], tok.stoi["o"], b, b]
    probs = one_hot(ids, tok.num_output_classes, 0.7)
    probs[2, tok.stoi["l"]] = 0.95  # the held frame with the best confidence is the character's confidence
    (d,) = tok.decode(probs[None])
    assert d.text == "llo"
    assert d.char_confidences[0] == pytest.approx(0.95)
    flat, lengths = tok.encode(["llo", "a"])
    assert lengths.tolist() == [3, 1] and "".join(tok.itos[i] for i in flat[:3]) == "llo"
    assert tok.decode_ids([tok.stoi["l"], b, tok.stoi["l"]]) == "ll"  # a blank separates repeats


def test_decode_rejects_wrong_shapes():
    tok = make_tokenizer("ctc", "36")
    with pytest.raises(ValueError, match="expected \\(N, T, C\\)"):
        tok.decode(np.zeros((5, 37)))
    with pytest.raises(ValueError, match="number of classes"):
        tok.decode(np.zeros((1, 5, 40)))
    with pytest.raises(ValueError, match="tokenizer kind"):
        make_tokenizer("beam")
