"""The trained demo target: a small LLaVA-style VLM that describes pictures of coloured
shapes (count, colour, shape, position) in long answers, trained on the CPU in minutes.

8 decoder layers at hidden 512 (so one draft layer costs well under a tenth of a target
step), a CLIP tower that sees 112x112 pictures as 64 image tokens, and a tokenizer trained
on the domain's text. Training stops at a time budget; the result is cached like the other
tiny models.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from . import scenes
from .targets import LLAVA_CHAT_TEMPLATE, LLAVA_SPECIALS, _llava_key
from .tokenizer import train_tokenizer, wrap

VOCAB = 512
IMAGE_SIZE = 112


def build_config(ids: dict[str, int]):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
    text = LlamaConfig(vocab_size=VOCAB, hidden_size=512, intermediate_size=1376,
                       num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                       max_position_embeddings=1024, bos_token_id=ids["<s>"],
                       eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"],
                       tie_word_embeddings=False)
    vision = CLIPVisionConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                              num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=14,
                              projection_dim=128)
    return LlavaConfig(text_config=text, vision_config=vision,
                       image_token_index=ids["<image>"], vision_feature_layer=-1,
                       vision_feature_select_strategy="default", projector_hidden_act="gelu",
                       image_seq_length=(IMAGE_SIZE // 14) ** 2)


def make_processor(tokenizer):
    from transformers import CLIPImageProcessor, LlavaProcessor
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                          vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=LLAVA_CHAT_TEMPLATE)


def training_batch(processor, rng: random.Random, size: int):
    """Chat-formatted (question, picture, description) examples; labels on answers only."""
    texts, images, answers = [], [], []
    for _ in range(size):
        scene = scenes.random_scene(rng)
        question = rng.choice(scenes.QUESTIONS)
        answers.append(scenes.describe(scene))
        texts.append(f"USER: <image>\n{question}\nASSISTANT:")
        images.append(scenes.draw(scene, IMAGE_SIZE))
    full = [f"{t} {a}</s>" for t, a in zip(texts, answers)]
    batch = processor(text=full, images=images, return_tensors="pt", padding=True)
    prompt_lens = [len(processor(text=t, images=i, return_tensors="pt")["input_ids"][0])
                   for t, i in zip(texts, images)]
    labels = batch["input_ids"].clone()
    for row, n in enumerate(prompt_lens):
        labels[row, :n] = -100
    labels[batch["attention_mask"] == 0] = -100
    return batch, labels


def train_demo_target(out: Path, minutes: float = 25.0, batch_size: int = 8,
                      lr: float = 1e-3, seed: int = 0, progress: bool = True) -> dict:
    from transformers import LlavaForConditionalGeneration
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(LLAVA_SPECIALS, VOCAB, seed, corpus=scenes.corpus(seed=seed))
    ids = {t: tok.token_to_id(t) for t in LLAVA_SPECIALS}
    tokenizer = wrap(tok, LLAVA_CHAT_TEMPLATE, unk_token="<unk>", bos_token="<s>",
                     eos_token="</s>", pad_token="<pad>")
    processor = make_processor(tokenizer)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(build_config(ids)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    rng = random.Random(seed)
    deadline = time.monotonic() + minutes * 60
    est_steps = max(100, int(minutes * 60 / 2.5))  # the schedule's length: a guess
    step, history = 0, []
    bar = tqdm(total=int(minutes * 60), desc="demo target", unit="s", disable=not progress)
    start = time.monotonic()
    while time.monotonic() < deadline:
        warm = min(1.0, (step + 1) / 50)
        for group in opt.param_groups:
            group["lr"] = lr * warm * 0.5 * (1 + math.cos(math.pi * min(1.0, step / est_steps)))
        batch, labels = training_batch(processor, rng, batch_size)
        loss = model(**batch, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        history.append(loss.item())
        bar.n = int(time.monotonic() - start)
        bar.set_postfix(step=step, loss=f"{sum(history[-20:]) / len(history[-20:]):.3f}")
        bar.refresh()
    bar.close()
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    weights = out / "model.safetensors"
    state = {_llava_key(k): v.clone() for k, v in load_file(weights).items()}
    save_file(state, weights, metadata={"format": "pt"})
    processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"steps": step, "final_loss": sum(history[-20:]) / max(1, len(history[-20:]))}


@torch.no_grad()
def evaluate_demo_target(path: Path, count: int = 20, seed: int = 12345,
                         max_new_tokens: int = 140) -> dict:
    """Greedy answers (HF transformers) to held-out pictures: mean item recall, and the
    mean answer length in tokens."""
    from ..train.target_features import load_target
    model, processor = load_target(str(path))
    rng = random.Random(seed)
    recalls, lengths = [], []
    for _ in range(count):
        scene = scenes.random_scene(rng)
        inputs = processor(text="USER: <image>\nDescribe the image.\nASSISTANT:",
                           images=scenes.draw(scene, IMAGE_SIZE), return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answer = out[0, inputs["input_ids"].shape[1]:]
        lengths.append(len(answer))
        recalls.append(scenes.item_recall(scene, processor.decode(answer,
                                                                  skip_special_tokens=True)))
    return {"item_recall": sum(recalls) / count, "answer_tokens": sum(lengths) / count}
