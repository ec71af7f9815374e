"""Word tokenizer and tiny text encoder."""

import logging

import pytest
import torch

from timeripple.demo.text import TinyTextEncoder, WordTokenizer, build_text_encoder


def test_known_words_map_to_ids():
    tok = WordTokenizer()
    ids = tok("A red circle, moving RIGHT!")
    assert ids.shape == (1, 16)
    assert [tok.vocab[i] for i in ids[0] if i] == ["a", "red", "circle", "moving", "right"]


def test_unknown_words_are_ignored_with_a_warning(caplog):
    tok = WordTokenizer()
    with caplog.at_level(logging.WARNING, logger="timeripple.demo.text"):
        ids = tok(["a purple dragon flying right", "a red circle"])
    assert "'dragon'" in caplog.text and "'flying'" in caplog.text
    assert "'purple'" not in caplog.text
    assert [tok.vocab[i] for i in ids[0] if i] == ["a", "purple", "right"]


def test_empty_prompt_is_all_padding_and_encodes_to_zeros():
    tok, enc = build_text_encoder()
    ids = tok(["", "a red circle"])
    assert int(ids[0].abs().sum()) == 0
    out = enc(ids)
    assert out.shape == (2, 16, enc.config.out_dim)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert out[1, :3].abs().sum() > 0 and torch.equal(out[1, 3:], torch.zeros_like(out[1, 3:]))


def test_encoder_config_carries_the_vocabulary():
    tok, enc = build_text_encoder()
    again = TinyTextEncoder.from_config(enc.config).tokenizer()
    assert again.vocab == tok.vocab
    assert torch.equal(again("a blue square"), tok("a blue square"))


def test_bad_inputs():
    tok = WordTokenizer()
    with pytest.raises(TypeError, match="prompt"):
        tok(3)
    with pytest.raises(ValueError, match="unique"):
        WordTokenizer(["a", "a"])
