"""The trained demo target: a small LLaVA-style VLM that describes pictures of coloured
shapes (colour, shape and place of each, then the count) in long answers, trained on the
CPU in 30 minutes.

8 decoder layers at hidden 512 (so one draft layer costs well under a tenth of a target
step), a CLIP tower that sees 84x84 pictures as 36 image tokens (2x2 patches of 14x14 per
grid cell), and a tokenizer trained on the domain's text. Training: a few seconds of supervised
pre-training of the tower (each image token learns its cell's colour and shape), then the
projector and language model (in bf16 autocast where the CPU has native bf16: about 2.5x
faster than fp32), one shape per picture for the first fifth of the time, cosine schedule over the time
budget; the weights are saved in fp32. Without the tower pre-training (64, 36 or 9 image
tokens) 25 minutes gave a model that describes the template but not the picture; with it,
9 image tokens (one per cell) recalled a third of the shapes on held-out pictures and 36
recalled all of them.
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
IMAGE_SIZE = 84
PATCH_SIZE = 14  # 2x2 patches per grid cell: 36 image tokens
SINGLE_SHAPE_FRACTION = 0.2


def build_config(ids: dict[str, int]):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
    text = LlamaConfig(vocab_size=VOCAB, hidden_size=512, intermediate_size=1376,
                       num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                       max_position_embeddings=1024, bos_token_id=ids["<s>"],
                       eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"],
                       tie_word_embeddings=False)
    vision = CLIPVisionConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                              num_attention_heads=2, image_size=IMAGE_SIZE,
                              patch_size=PATCH_SIZE,
                              projection_dim=128)
    return LlavaConfig(text_config=text, vision_config=vision,
                       image_token_index=ids["<image>"], vision_feature_layer=-1,
                       vision_feature_select_strategy="default", projector_hidden_act="gelu",
                       image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2)


def make_processor(tokenizer, image_size: int = IMAGE_SIZE):
    from transformers import CLIPImageProcessor, LlavaProcessor
    # White (the background) normalises to 0, so an empty cell's patch embeds to nothing
    # but its position and a shape stands out: with CLIP's usual mean and std a small model
    # did not learn to read a single shape's colour in 400 steps; with this it did.
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size},
                                         image_mean=[1.0, 1.0, 1.0], image_std=[0.5, 0.5, 0.5])
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                          patch_size=PATCH_SIZE,
                          vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=LLAVA_CHAT_TEMPLATE)


def picture_size(processor) -> int:
    """The side of the square pictures the target's processor makes."""
    return processor.image_processor.crop_size["height"]


def training_batch(processor, rng: random.Random, size: int, max_items: int = 4):
    """Chat-formatted (question, picture, description) examples; labels on answers only."""
    image_size = picture_size(processor)
    texts, images, answers = [], [], []
    for _ in range(size):
        scene = scenes.random_scene(rng, max_items=max_items)
        question = rng.choice(scenes.QUESTIONS)
        answers.append(scenes.describe(scene))
        texts.append(f"USER: <image>\n{question}\nASSISTANT:")
        images.append(scenes.draw(scene, image_size))
    full = [f"{t} {a}</s>" for t, a in zip(texts, answers)]
    batch = processor(text=full, images=images, return_tensors="pt", padding=True)
    prompt_lens = [len(processor(text=t, images=i, return_tensors="pt")["input_ids"][0])
                   for t, i in zip(texts, images)]
    labels = batch["input_ids"].clone()
    for row, n in enumerate(prompt_lens):
        labels[row, :n] = -100
    labels[batch["attention_mask"] == 0] = -100
    return batch, labels


def cell_labels(scene: list[scenes.Item], side: int = 3) -> tuple[list[int], list[int]]:
    """Per image token (a ``side`` x ``side`` grid of patches in reading order): the
    colour and shape class of the grid cell the patch lies in, 0 for an empty cell."""
    by_cell = {(i.row, i.col): i for i in scene}
    colours, shapes = [], []
    for token in range(side * side):
        item = by_cell.get((token // side * 3 // side, token % side * 3 // side))
        colours.append(1 + list(scenes.COLORS).index(item.color) if item else 0)
        shapes.append(1 + scenes.SHAPES.index(item.shape) if item else 0)
    return colours, shapes


def pretrain_vision(model, processor, rng: random.Random, steps: int = 150,
                    batch_size: int = 32, lr: float = 3e-3, progress: bool = True) -> float:
    """Supervised pre-training of the CLIP tower (LLaVA starts from a pre-trained one):
    each image token learns to tell its cell's colour and shape. Returns the final
    per-cell accuracy. Without it the language model learned where shapes are but not
    which, in 25 minutes (version 1)."""
    tower = model.model.vision_tower
    hidden = tower.config.hidden_size
    image_size = picture_size(processor)
    heads = torch.nn.ModuleList([torch.nn.Linear(hidden, 1 + len(scenes.COLORS)),
                                 torch.nn.Linear(hidden, 1 + len(scenes.SHAPES))])
    opt = torch.optim.AdamW([*tower.parameters(), *heads.parameters()], lr=lr)
    accuracy = 0.0
    for _ in tqdm(range(steps), desc="vision pre-training", disable=not progress):
        batch = [scenes.random_scene(rng) for _ in range(batch_size)]
        pixels = processor.image_processor([scenes.draw(sc, image_size) for sc in batch],
                                           return_tensors="pt")["pixel_values"]
        feats = tower(pixels, output_hidden_states=True).hidden_states[-1][:, 1:]
        side = image_size // PATCH_SIZE
        labels = [torch.tensor([cell_labels(sc, side)[k] for sc in batch]) for k in (0, 1)]
        logits = [head(feats) for head in heads]
        loss = sum(torch.nn.functional.cross_entropy(lg.flatten(0, 1), lb.flatten())
                   for lg, lb in zip(logits, labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
        accuracy = min((lg.argmax(-1) == lb).float().mean().item()
                       for lg, lb in zip(logits, labels))
    return accuracy


def _content_accuracy(logits, labels, content_ids) -> float:
    """Top-1 accuracy on colour and shape words: what only the picture tells (blind
    guessing gives about 0.2)."""
    target = labels[:, 1:]
    hit = torch.isin(target, content_ids)
    if not hit.any():
        return 0.0
    pred = logits[:, :-1].argmax(-1)
    return (pred[hit] == target[hit]).float().mean().item()


def train_demo_target(out: Path, minutes: float = 30.0, batch_size: int = 16,
                      lr: float = 1e-3, projector_lr_scale: float = 3.0, seed: int = 0,
                      progress: bool = True, bf16: bool | None = None) -> dict:
    from transformers import LlavaForConditionalGeneration

    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(LLAVA_SPECIALS, VOCAB, seed, corpus=scenes.corpus(seed=seed))
    ids = {t: tok.token_to_id(t) for t in LLAVA_SPECIALS}
    tokenizer = wrap(tok, LLAVA_CHAT_TEMPLATE, unk_token="<unk>", bos_token="<s>",
                     eos_token="</s>", pad_token="<pad>")
    processor = make_processor(tokenizer)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(build_config(ids)).train()
    vision_accuracy = pretrain_vision(model, processor, random.Random(seed + 1),
                                      progress=progress)
    report = train_language_model(model, processor, minutes, batch_size=batch_size, lr=lr,
                                  projector_lr_scale=projector_lr_scale, seed=seed,
                                  progress=progress, bf16=bf16)
    save_target(model, processor, out)
    return {**report, "vision_pretraining_accuracy": vision_accuracy}


def train_language_model(model, processor, minutes: float, *, batch_size: int = 16,
                         lr: float = 1e-3, projector_lr_scale: float = 3.0, seed: int = 0,
                         single_shape_fraction: float = SINGLE_SHAPE_FRACTION,
                         progress: bool = True, bf16: bool | None = None) -> dict:
    """The projector and language model, the tower frozen, for ``minutes``: cosine over
    the time budget, one shape per picture for the first ``single_shape_fraction``."""
    from ..train.precision import resolve_bf16
    bf16 = resolve_bf16(bf16)  # bf16 autocast where the CPU has it natively
    tok = processor.tokenizer
    model.train()
    # The pre-trained tower stays as it is; the projector, new, learns faster than the
    # language model.
    model.model.vision_tower.requires_grad_(False)
    projector = list(model.model.multi_modal_projector.parameters())
    ids_projector = {id(p) for p in projector}
    text = [p for p in model.parameters() if p.requires_grad and id(p) not in ids_projector]
    opt = torch.optim.AdamW([{"params": text, "scale": 1.0},
                             {"params": projector, "scale": projector_lr_scale}],
                            lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    content_ids = torch.tensor([tok.convert_tokens_to_ids(f"Ġ{w}")
                                for w in (*scenes.COLORS, *scenes.SHAPES)])
    rng = random.Random(seed)
    budget = minutes * 60
    step, history, seen = 0, [], []
    bar = tqdm(total=int(budget), desc="demo target", unit="s", disable=not progress)
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < budget:
        # Cosine over the time budget, so the schedule ends when the budget does.
        warm = min(1.0, (step + 1) / 50)
        for group in opt.param_groups:
            group["lr"] = group["scale"] * lr * warm * 0.5 * (
                1 + math.cos(math.pi * elapsed / budget))
        # Curriculum: one shape per picture first, so any attention over the image reads
        # its colour and shape; the lookup by place is learned on top of that.
        max_items = 1 if elapsed < single_shape_fraction * budget else 4
        batch, labels = training_batch(processor, rng, batch_size, max_items)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            result = model(**batch, labels=labels)
        loss = result.loss
        seen.append(_content_accuracy(result.logits, labels, content_ids))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*text, *projector], 1.0)
        opt.step()
        step += 1
        history.append(loss.item())
        bar.n = int(time.monotonic() - start)
        bar.set_postfix(step=step, loss=f"{sum(history[-20:]) / len(history[-20:]):.3f}",
                        content_acc=f"{sum(seen[-20:]) / len(seen[-20:]):.2f}")
        bar.refresh()
    bar.close()
    model.eval()
    return {"steps": step, "final_loss": sum(history[-20:]) / max(1, len(history[-20:])),
            "content_accuracy": sum(seen[-20:]) / max(1, len(seen[-20:]))}


def save_target(model, processor, out: Path) -> None:
    """HF weights with the vision tower's keys as the published LLaVA checkpoints name
    them, the processor and the tokenizer."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    weights = out / "model.safetensors"
    state = {_llava_key(k): v.clone() for k, v in load_file(weights).items()}
    save_file(state, weights, metadata={"format": "pt"})
    processor.save_pretrained(out)
    processor.tokenizer.save_pretrained(out)


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
                           images=scenes.draw(scene, picture_size(processor)),
                           return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answer = out[0, inputs["input_ids"].shape[1]:]
        lengths.append(len(answer))
        recalls.append(scenes.item_recall(scene, processor.decode(answer,
                                                                  skip_special_tokens=True)))
    return {"item_recall": sum(recalls) / count, "answer_tokens": sum(lengths) / count}


def main(argv=None) -> int:
    import argparse
    import json
    p = argparse.ArgumentParser(
        prog="python -m vllm_vispec.tiny.demo_target",
        description="Builds (once; then cached) the trained demo target and, with --drafts, "
        "its ViSpec and text-only EAGLE drafts; prints their paths and the target's item "
        "recall on held-out pictures.")
    p.add_argument("--minutes", type=float, default=None,
                   help="training budget of the target (default: the cached build's, 30)")
    p.add_argument("--drafts", action="store_true",
                   help="also train the drafts (vispec-train recipe, about 10 minutes)")
    p.add_argument("--evaluate", type=int, default=20, metavar="N",
                   help="held-out pictures to score the target on, 0 to skip (%(default)s)")
    args = p.parse_args(argv)
    from . import DEMO_TARGET_MINUTES, trained_demo_drafts, trained_demo_target
    target = trained_demo_target(args.minutes or DEMO_TARGET_MINUTES)
    report = {"target": str(target)}
    if args.drafts:
        report["drafts"] = {k: str(v) for k, v in trained_demo_drafts().items()}
    if args.evaluate:
        report["evaluation"] = evaluate_demo_target(target, count=args.evaluate)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
