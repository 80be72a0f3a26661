"""A byte-level BPE tokenizer trained on the spot, so tiny models need no hub download."""

from __future__ import annotations

import random

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
SHAPES = ["circle", "square", "triangle", "star", "cross", "ring", "bar", "dot"]
PLACES = ["left", "right", "top", "bottom", "middle", "corner", "center", "edge"]
WORDS = ["the", "a", "is", "in", "of", "and", "there", "image", "picture", "shows",
         "describe", "what", "how", "many", "where", "answer", "please", "with",
         "one", "two", "three", "four", "five", "near", "above", "below", "next", "to"]


def training_corpus(seed: int = 0, n: int = 400) -> list[str]:
    """Sentences in the demo domain (coloured shapes), enough to learn useful merges."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        c, s, p = rng.choice(COLORS), rng.choice(SHAPES), rng.choice(PLACES)
        k = rng.choice(["one", "two", "three", "four", "five"])
        lines.append(f"There is {k} {c} {s} in the {p} of the image.")
        lines.append(f"What is in the picture? Describe the {s} near the {p}.")
        lines.append(" ".join(rng.choice(WORDS + COLORS + SHAPES) for _ in range(12)))
    return lines


def train_tokenizer(special_tokens: list[str], vocab_size: int, seed: int = 0,
                    corpus: list[str] | None = None) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus or training_corpus(seed), trainer=trainer)
    return tok


def wrap(tok: Tokenizer, chat_template: str, **special: str) -> PreTrainedTokenizerFast:
    """A transformers tokenizer around ``tok`` with its special tokens and chat template."""
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **special)
    fast.chat_template = chat_template
    return fast
