"""The tiny targets run through HF transformers (the training code's feature extraction)."""

from __future__ import annotations

from vllm_vispec.tiny import tiny_target
from vllm_vispec.train import target_features as tf


def target_features(kind: str, token_ids: list[int], images: list):
    return tf.target_features(tiny_target(kind), token_ids, images)


def image_spans(kind: str, token_ids: list[int]):
    return tf.image_spans(token_ids, tf.image_token_id(tiny_target(kind)))
