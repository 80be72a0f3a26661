"""The demo target's builder: a few training steps produce a LLaVA checkpoint that HF
transformers loads with every key matched, 36 image tokens per picture."""

from __future__ import annotations

import torch

from vllm_vispec.tiny import scenes
from vllm_vispec.tiny.demo_target import IMAGE_SIZE, train_demo_target
from vllm_vispec.train.target_features import load_target


def test_builder_trains_and_saves_a_loadable_target(tmp_path):
    report = train_demo_target(tmp_path, minutes=0.05, batch_size=2, progress=False)
    assert report["steps"] >= 1 and torch.isfinite(torch.tensor(report["final_loss"]))
    model, processor = load_target(str(tmp_path))  # raises on missing/unexpected keys
    assert model.config.text_config.num_hidden_layers >= 8
    assert model.config.text_config.hidden_size >= 512
    img = scenes.draw(scenes.random_scene(__import__("random").Random(0)), IMAGE_SIZE)
    ids = processor(text="USER: <image>\nDescribe the image.\nASSISTANT:", images=img,
                    return_tensors="pt")["input_ids"][0]
    assert int((ids == model.config.image_token_index).sum()) == 36


def test_evaluation_reports_recall_and_length(tmp_path):
    from vllm_vispec.tiny.demo_target import evaluate_demo_target
    train_demo_target(tmp_path, minutes=0.02, batch_size=2, progress=False)
    report = evaluate_demo_target(tmp_path, count=2, max_new_tokens=8)
    assert 0.0 <= report["item_recall"] <= 1.0 and report["answer_tokens"] <= 8
