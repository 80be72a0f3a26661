"""The demo domain: scenes, pictures and descriptions that only the picture can tell."""

from __future__ import annotations

import random

from vllm_vispec.tiny import scenes
from vllm_vispec.tiny.demo_target import VOCAB
from vllm_vispec.tiny.targets import LLAVA_SPECIALS
from vllm_vispec.tiny.tokenizer import train_tokenizer


def test_descriptions_are_long_and_name_every_item():
    tok = train_tokenizer(LLAVA_SPECIALS, VOCAB, corpus=scenes.corpus(500))
    rng = random.Random(0)
    for _ in range(50):
        scene = scenes.random_scene(rng)
        text = scenes.describe(scene)
        assert len(tok.encode(text).ids) >= 64
        for item in scene:
            assert f"In {item.place()} there is a {item.color} {item.shape}." in text
        assert text.count("there is nothing") == 9 - len(scene)


def test_pictures_show_each_item_in_its_cell():
    scene = [scenes.Item("red", "square", 0, 0), scenes.Item("blue", "circle", 2, 2)]
    img = scenes.draw(scene, 112)
    cell = 112 // 3
    assert img.getpixel((cell // 2, cell // 2)) == scenes.COLORS["red"]
    assert img.getpixel((2 * cell + cell // 2, 2 * cell + cell // 2)) == scenes.COLORS["blue"]
    assert img.getpixel((cell + cell // 2, cell + cell // 2)) == (255, 255, 255)


def test_item_recall_counts_items_named_right():
    scene = [scenes.Item("red", "square", 0, 0), scenes.Item("blue", "circle", 1, 1)]
    text = scenes.describe(scene)
    assert scenes.item_recall(scene, text) == 1.0
    assert scenes.item_recall(scene, "In the northwest there is a red square.") == 0.5
    assert scenes.item_recall(scene, "In the center there is a blue square.") == 0.0


def test_cell_labels_follow_the_patch_grid():
    from vllm_vispec.tiny.demo_target import cell_labels
    scene = [scenes.Item("red", "square", 0, 0), scenes.Item("blue", "circle", 2, 1)]
    red, blue = 1 + list(scenes.COLORS).index("red"), 1 + list(scenes.COLORS).index("blue")
    colours, shapes = cell_labels(scene)  # one token per cell
    assert colours == [red, 0, 0, 0, 0, 0, 0, blue, 0]
    assert shapes[0] == 1 + scenes.SHAPES.index("square") and shapes[1] == 0
    colours, _ = cell_labels(scene, side=6)  # 2x2 patches per cell
    assert [t for t, c in enumerate(colours) if c == red] == [0, 1, 6, 7]
    assert [t for t, c in enumerate(colours) if c == blue] == [26, 27, 32, 33]
