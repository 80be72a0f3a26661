"""Training prompts from a user's files: each format read into (chat messages, pictures),
malformed files and missing pictures refused with the file, entry and problem named, the
long-answer instruction, pixel limits, and the CLI's prompt options."""

from __future__ import annotations

import base64
import json
import warnings
from pathlib import Path

import pytest
from PIL import Image

from vllm_vispec.tiny.prompts import demo_prompts
from vllm_vispec.train.cli import main as vispec_train
from vllm_vispec.train.cli import parse_args, recipe_data_steps
from vllm_vispec.train.pixel_limits import (VISPEC_MAX_PIXELS, VISPEC_MIN_PIXELS,
                                            pixel_limits_for)
from vllm_vispec.train.prompt_files import PromptFileError, read_prompt_file
from vllm_vispec.train.prompts import (LONG_ANSWER_INSTRUCTION, open_prompt_file,
                                       open_prompts, with_long_answers)

COLORS = {"red.png": (255, 0, 0), "green.png": (0, 255, 0), "blue.png": (0, 0, 255)}


def picture(folder: Path, name: str, size=(20, 12)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, COLORS.get(name, (9, 9, 9))).save(folder / name)
    return folder / name


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def color(img: Image.Image) -> tuple:
    return img.getpixel((0, 0))


def parts(messages: list) -> list:
    """The user content as (kind, value) pairs: the text, or a picture's colour."""
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, str):
            out.append((m["role"], content))
            continue
        for part in content:
            out.append(("text", part["text"]) if part["type"] == "text"
                       else ("image", color(part["image_pil"])))
    return out


# jsonl


def test_jsonl_pictures_resolve_next_to_the_file_and_in_order(tmp_path):
    for name in COLORS:
        picture(tmp_path / "pics", name)
    data_uri = "data:image/png;base64," + base64.b64encode(
        (tmp_path / "pics" / "blue.png").read_bytes()).decode()
    path = jsonl(tmp_path / "set.jsonl", [
        {"image": "pics/red.png", "question": "What colour?"},
        {"question": "No picture here."},
        {"images": ["pics/green.png", str(tmp_path / "pics" / "red.png")],
         "question": "Compare <image> with <image>."},
        {"image": data_uri, "prompt": "And this one?"},
    ])
    prompts = open_prompt_file(path)
    assert len(prompts) == 4 and prompts.max_images == 2
    messages, images = prompts[0]
    assert parts(messages) == [("image", (255, 0, 0)), ("text", "What colour?")]
    assert [color(i) for i in images] == [(255, 0, 0)] and images[0].mode == "RGB"
    messages, images = prompts[1]
    assert messages == [{"role": "user", "content": "No picture here."}] and images == []
    messages, images = prompts[2]
    assert parts(messages) == [("text", "Compare"), ("image", (0, 255, 0)), ("text", "with"),
                               ("image", (255, 0, 0)), ("text", ".")]
    assert [color(i) for i in images] == [(0, 255, 0), (255, 0, 0)]
    # the pictures the messages carry are the ones HF records features of
    assert [p["image_pil"] for p in messages[0]["content"] if p["type"] == "image_pil"] == images
    assert parts(prompts[3][0]) == [("image", (0, 0, 255)), ("text", "And this one?")]


def test_transparent_pictures_are_read_over_white(tmp_path):
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    path = jsonl(tmp_path / "set.jsonl", [{"image": "clear.png", "question": "Q"}])
    _, images = open_prompt_file(path)[0]
    assert images[0].mode == "RGB" and color(images[0]) == (255, 255, 255)


@pytest.mark.parametrize("line, problem", [
    ('{"image": "a.png", "question": "Q"', r"line 2: not JSON"),
    ('["a.png", "Q"]', r"line 2: expected a JSON object, got list"),
    ('{"image": "a.png"}', r"line 2: no question .*keys are \['image'\]"),
    ('{"question": "  "}', r"line 2: 'question' must be a non-empty string"),
    ('{"image": "a.png", "images": ["a.png"], "question": "Q"}', r"line 2: both 'image' and"),
    ('{"image": 3, "question": "Q"}', r"line 2: 'image' must be a path, URL or data URI"),
    ('{"images": ["a.png"], "question": "<image> and <image>"}',
     r"line 2: 1 image\(s\) but 2 <image> placeholder\(s\)"),
])
def test_malformed_jsonl_lines_are_refused_by_line(tmp_path, line, problem):
    picture(tmp_path, "a.png")
    path = jsonl(tmp_path / "set.jsonl", [{"image": "a.png", "question": "fine"}, line])
    with pytest.raises(PromptFileError, match=f"{tmp_path / 'set.jsonl'} {problem}"):
        open_prompt_file(path)


def test_missing_pictures_are_all_named_before_any_work(tmp_path):
    picture(tmp_path, "here.png")
    rows = [{"image": "here.png", "question": "Q"}] + [
        {"image": f"gone{i}.png", "question": "Q"} for i in range(7)]
    path = jsonl(tmp_path / "set.jsonl", rows)
    with pytest.raises(PromptFileError) as err:
        open_prompt_file(path)
    message = str(err.value)
    assert "7 picture(s) missing" in message and "--image-root" in message
    assert f"set.jsonl line 2: image gone0.png not found ({tmp_path / 'gone0.png'})" in message
    assert "line 6: image gone4.png" in message and "gone5.png" not in message
    assert "and 2 more" in message
    # text-only data leaves the pictures out, so it does not need them
    prompts = open_prompt_file(path, images=False)
    assert len(prompts) == 8 and prompts[1] == ([{"role": "user", "content": "Q"}], [])


def test_unreadable_picture_names_its_line(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a picture")
    path = jsonl(tmp_path / "set.jsonl", [{"image": "bad.png", "question": "Q"}])
    prompts = open_prompt_file(path)  # exists, so it passes the up-front check
    with pytest.raises(PromptFileError, match=r"set.jsonl line 1: image bad.png could not "
                                              "be read"):
        prompts[0]


# COCO captions


def coco(folder: Path, images: list, annotations: list) -> Path:
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    path = folder / "annotations" / "captions_val2017.json"
    path.write_text(json.dumps({"info": {}, "images": images, "annotations": annotations}))
    return path


def test_coco_asks_to_describe_each_picture_from_the_split_folder(tmp_path):
    picture(tmp_path / "val2017", "red.png")
    picture(tmp_path / "val2017", "green.png")
    path = coco(tmp_path, [{"id": 1, "file_name": "red.png"}, {"id": 2, "file_name": "green.png"}],
                [{"image_id": 1, "caption": "A red square."},
                 {"image_id": 1, "caption": "Red."}, {"image_id": 2, "caption": "Green."}])
    assert read_prompt_file(path)[0] == "coco"
    prompts = open_prompt_file(path)
    assert len(prompts) == 2  # one per picture, not per caption
    assert parts(prompts[1][0]) == [("image", (0, 255, 0)), ("text", "Describe the image.")]
    # --image-root points elsewhere
    picture(tmp_path / "elsewhere", "red.png")
    with pytest.raises(PromptFileError, match=r"images\[1\]: image green.png not found"):
        open_prompt_file(path, image_root=tmp_path / "elsewhere")


@pytest.mark.parametrize("images, annotations, problem", [
    ([{"id": 1, "file_name": "a.png"}, {"id": 2}], [], r"images\[1\]: needs a 'file_name'"),
    ([{"id": 1, "file_name": "a.png"}], [{"image_id": 1}],
     r"annotations\[0\]: needs 'image_id' and 'caption'"),
    ([{"id": 1, "file_name": "a.png"}], [{"image_id": 1, "caption": "c"},
                                          {"image_id": 5, "caption": "c"}],
     r"annotations\[1\]: image_id 5 is not in 'images'"),
    ([{"id": 1, "file_name": "a.png"}], None, r"not COCO captions: no 'annotations' list"),
])
def test_malformed_coco_is_refused_by_entry(tmp_path, images, annotations, problem):
    path = coco(tmp_path, images, annotations)
    with pytest.raises(PromptFileError, match=f"captions_val2017.json:? {problem}"):
        read_prompt_file(path)


# LLaVA-Pretrain / ShareGPT conversations


def test_conversations_keep_the_human_turns_and_drop_the_answers(tmp_path):
    picture(tmp_path / "00001", "red.png")
    path = tmp_path / "blip_laion_cc_sbu_558k.json"
    path.write_text(json.dumps([
        {"id": "1", "image": "00001/red.png", "conversations": [
            {"from": "human", "value": "<image>\nRender a clear and concise summary."},
            {"from": "gpt", "value": "a red square"}]},
        {"id": "2", "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
            {"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "Red"}]},
    ]))
    assert read_prompt_file(path)[0] == "conversations"
    prompts = open_prompt_file(path)
    messages, images = prompts[0]
    assert parts(messages) == [("image", (255, 0, 0)),
                               ("text", "Render a clear and concise summary.")]
    assert len(images) == 1
    messages, images = prompts[1]
    assert messages == [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "Hi"},
                        {"role": "user", "content": "Name a colour."}] and images == []
    # text-only: the placeholder goes with the picture
    assert open_prompt_file(path, images=False)[0][0] == [
        {"role": "user", "content": "Render a clear and concise summary."}]


@pytest.mark.parametrize("entry, problem", [
    ({"image": "a.png"}, r"entry 1: needs a 'conversations' list"),
    ({"conversations": [{"from": "gpt", "value": "only an answer"}]}, r"entry 1: no human turn"),
    ({"conversations": [{"from": "human", "value": "Q"}, {"from": "robot", "value": "A"}]},
     r"entry 1 turn 1: unknown speaker 'robot'"),
    ({"conversations": [{"from": "human", "value": 7}]},
     r"entry 1 turn 0: needs 'from' and a string 'value'"),
])
def test_malformed_conversations_are_refused_by_entry(tmp_path, entry, problem):
    path = tmp_path / "chat.json"
    path.write_text(json.dumps([{"conversations": [{"from": "human", "value": "ok"}]}, entry]))
    with pytest.raises(PromptFileError, match=f"chat.json {problem}"):
        read_prompt_file(path)


# format detection


def test_the_format_is_read_from_the_content_or_forced(tmp_path):
    one_line = jsonl(tmp_path / "one.txt", [{"question": "Q"}])
    assert read_prompt_file(one_line)[0] == "jsonl"  # a single line is still jsonl
    with pytest.raises(PromptFileError, match="one.txt: not COCO captions"):
        read_prompt_file(one_line, "coco")
    with pytest.raises(PromptFileError, match="one.txt: conversations must be a JSON list"):
        read_prompt_file(one_line, "conversations")
    (tmp_path / "pretty.json").write_text(json.dumps({"question": "Q"}, indent=2))
    with pytest.raises(PromptFileError, match="pretty.json: a JSON object that is not COCO"):
        read_prompt_file(tmp_path / "pretty.json")
    (tmp_path / "notes.txt").write_text("some words\n")
    with pytest.raises(PromptFileError, match="notes.txt: not a prompt file"):
        read_prompt_file(tmp_path / "notes.txt")
    with pytest.raises(PromptFileError, match="notes.txt: not JSON .* at line 1"):
        read_prompt_file(tmp_path / "notes.txt", "coco")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(PromptFileError, match="empty.jsonl is empty"):
        read_prompt_file(tmp_path / "empty.jsonl")
    (tmp_path / "none.json").write_text("[]")
    with pytest.raises(PromptFileError, match="none.json holds no prompts"):
        read_prompt_file(tmp_path / "none.json")
    with pytest.raises(PromptFileError, match="absent.jsonl does not exist"):
        read_prompt_file(tmp_path / "absent.jsonl")


# long answers, selection, sources


def test_long_answers_end_the_last_user_turn():
    assert with_long_answers([{"role": "user", "content": "Why?"}]) == [
        {"role": "user", "content": f"Why? {LONG_ANSWER_INSTRUCTION}"}]
    image = {"type": "image_pil", "image_pil": None}
    text_last = [{"role": "user", "content": [image, {"type": "text", "text": "Describe."}]}]
    assert with_long_answers(text_last)[0]["content"] == [
        image, {"type": "text", "text": f"Describe. {LONG_ANSWER_INSTRUCTION}"}]
    assert text_last[0]["content"][1]["text"] == "Describe."  # the input is left as it was
    image_last = [{"role": "user", "content": "first"},
                  {"role": "user", "content": [{"type": "text", "text": "Q"}, image]}]
    out = with_long_answers(image_last)
    assert out[0]["content"] == "first"
    assert out[1]["content"][-1] == {"type": "text", "text": LONG_ANSWER_INSTRUCTION}


def test_a_count_draws_the_same_prompts_for_a_seed_in_file_order(tmp_path):
    path = jsonl(tmp_path / "set.jsonl", [{"question": f"Q{i}"} for i in range(20)])

    def questions(seed):
        return [m[0]["content"] for m, _ in open_prompt_file(path, 5, seed)]

    assert questions(3) == questions(3) != questions(4)
    assert questions(3) == sorted(questions(3), key=lambda q: int(q[1:]))
    assert len(open_prompt_file(path, 50)) == 20  # more than the file holds: all of it
    long = open_prompts(str(path), 2, long_answers=True)
    assert all(m[0]["content"].endswith(LONG_ANSWER_INSTRUCTION) for m, _ in long)


def test_the_demo_domain_is_a_function_source():
    source = "vllm_vispec.tiny.prompts:demo_prompts"
    got, want = open_prompts(source, 3, seed=5), demo_prompts(3, seed=5)
    assert [m for m, _ in got] == [m for m, _ in want]
    assert all(len(images) == 1 for _, images in got)
    text = open_prompts(source, 2, seed=5, images=False, long_answers=True)
    assert all(i == [] and m[0]["content"].endswith(LONG_ANSWER_INSTRUCTION) for m, i in text)
    with pytest.raises(PromptFileError, match="needs a prompt count"):
        open_prompts(source, None)
    with pytest.raises(PromptFileError, match="prompt source vllm_vispec.tiny.prompts:nope"):
        open_prompts("vllm_vispec.tiny.prompts:nope", 2)


# pixel limits


def test_pixel_limits_apply_to_qwen_vl_targets_only():
    qwen = {"model_type": "qwen2_5_vl"}
    limits = pixel_limits_for(qwen)
    assert (limits.min_pixels, limits.max_pixels) == (VISPEC_MIN_PIXELS, VISPEC_MAX_PIXELS)
    assert (VISPEC_MIN_PIXELS, VISPEC_MAX_PIXELS) == (256 * 28 * 28, 1280 * 28 * 28)
    assert pixel_limits_for(qwen, max_pixels=VISPEC_MIN_PIXELS).max_pixels == VISPEC_MIN_PIXELS
    assert pixel_limits_for({"model_type": "llava"}, 1, 2) is None
    with pytest.raises(ValueError, match="0 < min-pixels <= max-pixels"):
        pixel_limits_for(qwen, 100, 50)


def test_hf_resizes_like_the_kwargs_vllm_hands_the_processor():
    """vLLM passes ``min_pixels``/``max_pixels`` on to the HF processor; the recorded
    features use ``size``: both must give the same image grid, and not the default one."""
    from transformers import Qwen2VLImageProcessor
    processor = Qwen2VLImageProcessor(patch_size=14, merge_size=2, temporal_patch_size=2)
    img = Image.new("RGB", (300, 200), (10, 20, 30))
    limits = pixel_limits_for({"model_type": "qwen2_vl"}, 8 * 28 * 28, 16 * 28 * 28)

    def grid(**kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # min_pixels: HF's older name
            return processor(images=[img], return_tensors="pt", **kwargs)["image_grid_thw"]

    ours = grid(**limits.hf_kwargs())
    assert ours.tolist() == grid(**limits.vllm_kwargs()).tolist()
    assert ours.tolist() != grid().tolist()
    tokens = int(ours.prod()) // 4  # 2x2 patches merge into one image token
    assert 8 <= tokens <= 16


# the CLI


def fake_target(folder: Path, model_type: str = "llava") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    return folder


def test_data_refuses_a_malformed_file_before_starting_vllm(tmp_path):
    target = fake_target(tmp_path / "target")
    bad = jsonl(tmp_path / "set.jsonl", [{"question": "Q"}, "{oops"])
    with pytest.raises(SystemExit, match=r"vispec-train data: .*set.jsonl line 2: not JSON"):
        vispec_train(["data", "--target", str(target), "--prompts", str(bad),
                      "--out", str(tmp_path / "out")])
    missing = jsonl(tmp_path / "missing.jsonl", [{"image": "gone.png", "question": "Q"}])
    with pytest.raises(SystemExit, match=r"missing.jsonl line 1: image gone.png not found"):
        vispec_train(["data", "--target", str(target), "--prompts", str(missing),
                      "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="--max-tokens 64 leaves no room"):
        vispec_train(["data", "--target", str(target), "--prompts", str(bad),
                      "--max-model-len", "64", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_recipe_feeds_the_prompt_file_to_both_data_steps(tmp_path):
    target = fake_target(tmp_path / "target")
    steps = dict(recipe_data_steps(parse_args([
        "recipe", "--target", str(target), "--out", str(tmp_path / "run"),
        "--prompts", "set.jsonl", "--long-answers", "--max-pixels", "1000"])))
    text, image = steps["data-text"], steps["data-image"]
    assert text[text.index("--prompts") + 1] == image[image.index("--prompts") + 1] == "set.jsonl"
    assert "--text-only" in text and "--text-only" not in image
    assert "--num-prompts" not in image and "--num-prompts" not in text  # all of the file
    assert all("--long-answers" in s and s[s.index("--max-pixels") + 1] == "1000"
               for s in (text, image))
    counted = dict(recipe_data_steps(parse_args([
        "recipe", "--target", str(target), "--out", str(tmp_path / "run"),
        "--prompts", "set.jsonl", "--num-prompts", "7"])))
    assert all(s[s.index("--num-prompts") + 1] == "7" for s in counted.values())
    demo = dict(recipe_data_steps(parse_args([
        "recipe", "--target", str(target), "--out", str(tmp_path / "run"),
        "--text-prompts", "chat.json"])))
    assert demo["data-text"][demo["data-text"].index("--prompts") + 1] == "chat.json"
    image = demo["data-image"]
    assert image[image.index("--prompts") + 1] == "vllm_vispec.tiny.prompts:demo_prompts"
    assert image[image.index("--num-prompts") + 1] == "300"
    assert "--num-prompts" not in demo["data-text"]  # all of the --text-prompts file
    plain = dict(recipe_data_steps(parse_args([
        "recipe", "--target", str(target), "--out", str(tmp_path / "run")])))
    assert [s[s.index("--num-prompts") + 1] for s in plain.values()] == ["100", "300"]


def test_recipe_refuses_data_made_from_other_prompts(tmp_path):
    from vllm_vispec.train.cli import COMPLETE, SETTINGS, data_settings
    target = fake_target(tmp_path / "target")
    recipe = ["recipe", "--target", str(target), "--out", str(tmp_path / "run")]
    jsonl(tmp_path / "a.jsonl", [{"question": "Q"}])
    for name, argv in recipe_data_steps(parse_args([*recipe, "--prompts",
                                                    str(tmp_path / "a.jsonl")])):
        (tmp_path / "run" / name).mkdir(parents=True)
        (tmp_path / "run" / name / COMPLETE).write_text("1\n")
        (tmp_path / "run" / name / SETTINGS).write_text(
            json.dumps(data_settings(parse_args(argv))))
    jsonl(tmp_path / "b.jsonl", [{"question": "Q"}])
    with pytest.raises(SystemExit, match=r"data-text was made with other \['prompts'\]"):
        vispec_train([*recipe, "--prompts", str(tmp_path / "b.jsonl")])
