"""Finding, checking and preparing draft checkpoints: strict, with clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from vllm_vispec.model.checkpoint import locate_draft, prepare_draft, read_draft
from vllm_vispec.model.hf_config import DRAFT_ARCHITECTURE
from vllm_vispec.tiny import tiny_draft


@pytest.fixture
def draft_copy(tmp_path):
    out = tmp_path / "draft"
    shutil.copytree(tiny_draft("llava"), out)
    return out


def rewrite_weights(draft_dir, edit):
    state = load_file(draft_dir / "model.safetensors")
    edit(state)
    save_file(state, draft_dir / "model.safetensors")


def test_tiny_draft_reads_with_num_q_from_the_checkpoint(draft_copy):
    dims, weights = read_draft(draft_copy)
    assert dims.num_q == 2 and dims.hidden_size == 256 and weights.name == "model.safetensors"


def test_pytorch_bin_checkpoints_load_too(draft_copy):
    state = load_file(draft_copy / "model.safetensors")
    (draft_copy / "model.safetensors").unlink()
    torch.save(state, draft_copy / "pytorch_model.bin")
    dims, weights = read_draft(draft_copy)
    assert weights.name == "pytorch_model.bin" and dims.num_q == 2


def test_renamed_tensor_fails_naming_both_keys(draft_copy):
    rewrite_weights(draft_copy, lambda s: s.__setitem__("imgfc.weight", s.pop("img_fc.weight")))
    with pytest.raises(ValueError, match=r"missing keys: \['img_fc.weight'\].*"
                                         r"unexpected keys: \['imgfc.weight'\]"):
        read_draft(draft_copy)


def test_missing_tensor_fails_with_its_key(draft_copy):
    rewrite_weights(draft_copy, lambda s: s.pop("layers.0.mlp.down_proj.weight"))
    with pytest.raises(ValueError, match=r"missing keys: \['layers.0.mlp.down_proj.weight'\]"):
        read_draft(draft_copy)


def test_misshaped_tensor_fails_with_its_key(draft_copy):
    rewrite_weights(draft_copy, lambda s: s.__setitem__("fc.bias", torch.zeros(255)))
    with pytest.raises(ValueError, match=r"fc.bias: checkpoint \(255,\), expected \(256,\)"):
        read_draft(draft_copy)


def test_eagle_draft_without_adaptor_is_rejected(draft_copy):
    rewrite_weights(draft_copy, lambda s: s.pop("imadpt.q"))
    with pytest.raises(ValueError, match="imadpt.q.*EAGLE draft rather than a ViSpec"):
        read_draft(draft_copy)


def test_missing_paths_and_files_are_named(tmp_path, draft_copy):
    with pytest.raises(FileNotFoundError, match="not found.*nowhere"):
        locate_draft(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match='needs "model"'):
        locate_draft(None)
    (draft_copy / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has no weights"):
        read_draft(draft_copy)
    (draft_copy / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        read_draft(draft_copy)


def test_offline_hub_id_fails_clearly():
    with pytest.raises(FileNotFoundError, match="neither a local directory nor a hub"):
        locate_draft("JLKang/ViSpec-does-not-exist")


def test_prepared_draft_names_our_class_and_ignores_copied_keys(draft_copy):
    published = json.loads((draft_copy / "config.json").read_text())
    assert published["architectures"] == ["LlavaForConditionalGeneration"]
    out = prepare_draft(str(draft_copy), "t", target_hidden=256, target_vocab=448,
                        target_max_len=8192)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == [DRAFT_ARCHITECTURE] and cfg["model_type"] == "llama"
    assert cfg["vispec"]["dims"]["num_q"] == 2
    assert cfg["max_position_embeddings"] == 8192  # RoPE covers the target's context
    assert (out / "model.safetensors").resolve() == (draft_copy / "model.safetensors")
    # Idempotent: the same draft maps to the same prepared directory.
    assert prepare_draft(str(draft_copy), "t", 256, 448, 8192) == out


@pytest.mark.parametrize("hidden,vocab,problem", [
    (512, 448, "hidden size 256 != target's 512"),
    (256, 32000, "vocabulary size 448 != target's 32000"),
])
def test_draft_for_another_target_is_rejected(draft_copy, hidden, vocab, problem):
    with pytest.raises(ValueError, match=f"does not fit target my-target: {problem}"):
        prepare_draft(str(draft_copy), "my-target", hidden, vocab, 1024)
