"""Word-level tokenizer and small text encoder of the embedded demo (trained with the tiny model).

The vocabulary is exactly the words the clip generator puts in captions (:func:`clips.vocabulary`).
Unknown words are dropped with a warning that names them; an empty prompt (or one with no known word)
becomes all padding, which the encoder maps to the unconditioned embedding (all zeros), the same
embedding the model saw for the ~10% of training captions that were dropped for classifier-free
guidance.
"""

from __future__ import annotations

import logging
import re
from typing import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .._validation import type_error, value_error
from .clips import vocabulary
from .model import TEXT_DIM

logger = logging.getLogger(__name__)

PAD_TOKEN = "<pad>"
MAX_LENGTH = 16


class WordTokenizer:
    """Maps prompts to fixed-length rows of word ids (id 0 = padding).

    Args:
        vocab (`Sequence[str]`, *optional*): the known words; defaults to the clip generator's words.
        max_length (`int`, defaults to 16): ids per prompt; longer prompts are cut (with a warning).

    Example:

    ```py
    >>> from timeripple.demo.text import WordTokenizer
    >>> tok = WordTokenizer()
    >>> ids = tok(["a red circle moving right", ""])
    >>> ids.shape, int(ids[1].sum())
    (torch.Size([2, 16]), 0)
    ```
    """

    def __init__(self, vocab: Sequence[str] | None = None, max_length: int = MAX_LENGTH):
        vocab = list(vocabulary() if vocab is None else vocab)
        if PAD_TOKEN in vocab or len(set(vocab)) != len(vocab):
            raise value_error("vocab", vocab, f"words must be unique and not {PAD_TOKEN!r}", "dedupe it")
        if not isinstance(max_length, int) or max_length < 1:
            raise value_error("max_length", max_length, "must be a positive int", "use e.g. 16")
        self.vocab = [PAD_TOKEN] + vocab
        self.max_length = max_length
        self._ids = {w: i for i, w in enumerate(self.vocab)}

    @property
    def vocab_size(self) -> int:
        """Number of ids, padding included."""
        return len(self.vocab)

    def words(self, prompt: str) -> list[str]:
        """The lower-cased words of ``prompt`` (letters only; punctuation separates words)."""
        return re.findall(r"[a-z]+", prompt.lower())

    def __call__(self, prompts: str | Sequence[str]) -> torch.LongTensor:
        """Tokenize one prompt or a list of prompts into a ``(B, max_length)`` int64 tensor."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
            raise type_error("prompt", prompts, "a str or a list of str", "pass text prompts")
        rows, unknown = [], []
        for prompt in prompts:
            ids = []
            for word in self.words(prompt):
                if word in self._ids:
                    ids.append(self._ids[word])
                elif word not in unknown:
                    unknown.append(word)
            if len(ids) > self.max_length:
                logger.warning(
                    "Prompt %r has %d known words; only the first %d are used.", prompt, len(ids),
                    self.max_length,
                )
                ids = ids[: self.max_length]
            rows.append(ids + [0] * (self.max_length - len(ids)))
        if unknown:
            logger.warning(
                "Ignoring words the tiny demo model does not know: %s. Known words: %s.",
                ", ".join(repr(w) for w in unknown), ", ".join(self.vocab[1:]),
            )
        return torch.tensor(rows, dtype=torch.long)


class TinyTextEncoder(ModelMixin, ConfigMixin):
    """Small trainable text encoder: word + position embeddings, a few transformer layers, and a
    projection to the tiny Wan model's ``text_dim``. Padding positions output zeros.

    Args:
        vocab_size (`int`): ids the embedding accepts (the tokenizer's ``vocab_size``).
        max_length (`int`, defaults to 16): the longest id row (learned positions).
        hidden_dim (`int`, defaults to 128): width of the encoder layers.
        num_layers (`int`, defaults to 2): transformer encoder layers.
        num_heads (`int`, defaults to 4): attention heads per layer.
        out_dim (`int`, defaults to 64): width of the output (the transformer's ``text_dim``).
        vocab (`list[str]`, *optional*): the tokenizer's words, stored in the config so that saved
            weights and tokenizer always travel together.

    Example:

    ```py
    >>> from timeripple.demo.text import TinyTextEncoder, WordTokenizer
    >>> tok = WordTokenizer()
    >>> enc = TinyTextEncoder(vocab_size=tok.vocab_size, vocab=tok.vocab[1:])
    >>> enc(tok("a red circle")).shape
    torch.Size([1, 16, 64])
    ```
    """

    @register_to_config
    def __init__(
        self,
        vocab_size: int,
        max_length: int = MAX_LENGTH,
        hidden_dim: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        out_dim: int = TEXT_DIM,
        vocab: list[str] | None = None,
    ):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, hidden_dim, padding_idx=0)
        self.position = nn.Parameter(torch.zeros(1, max_length, hidden_dim))
        layer = nn.TransformerEncoderLayer(
            hidden_dim, num_heads, dim_feedforward=4 * hidden_dim, dropout=0.0, activation="gelu",
            batch_first=True, norm_first=True,
        )
        self.layers = nn.ModuleList([layer] + [_clone(layer) for _ in range(num_layers - 1)])
        self.norm = nn.LayerNorm(hidden_dim)
        self.proj = nn.Linear(hidden_dim, out_dim)
        nn.init.normal_(self.position, std=0.02)

    def forward(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """``(B, L)`` ids -> ``(B, L, out_dim)`` hidden states; rows of padding give zeros."""
        keep = (input_ids != 0).unsqueeze(-1)  # (B, L, 1)
        x = self.embed(input_ids) + self.position[:, : input_ids.shape[1]]  # (B, L, hidden)
        for layer in self.layers:
            x = layer(x)
        return self.proj(self.norm(x)) * keep.to(x.dtype)

    def tokenizer(self) -> WordTokenizer:
        """A :class:`WordTokenizer` with this encoder's stored vocabulary."""
        return WordTokenizer(self.config.vocab, self.config.max_length)


def _clone(layer: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(layer)


def build_text_encoder(tokenizer: WordTokenizer | None = None, **kwargs) -> tuple[WordTokenizer, TinyTextEncoder]:
    """A fresh tokenizer and a matching, randomly initialised :class:`TinyTextEncoder`.

    Args:
        tokenizer (`WordTokenizer`, *optional*): defaults to the clip generator's vocabulary.
        **kwargs: forwarded to :class:`TinyTextEncoder` (``hidden_dim``, ``num_layers``, ...).
    """
    tokenizer = tokenizer or WordTokenizer()
    encoder = TinyTextEncoder(
        vocab_size=tokenizer.vocab_size, max_length=tokenizer.max_length, vocab=tokenizer.vocab[1:], **kwargs
    )
    return tokenizer, encoder
