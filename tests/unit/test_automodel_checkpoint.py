"""Tiny drafts in NeMo Automodel's layout: read back strictly, onto the published names."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from vllm_vispec.model.checkpoint import inspect_draft, load_draft_weights, read_draft
from vllm_vispec.tiny import tiny_draft


@pytest.mark.parametrize("kind", ["llava", "qwen2_5_vl"])
def test_released_draft_in_automodels_layout_loads_to_the_published_tensors(kind):
    published_dims, published = load_draft_weights(tiny_draft(kind))
    folder = tiny_draft(kind, layout="automodel-released")
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["VispecDraftModel"]
    assert config["draft_skip_first_input_norm"] and not config["draft_apply_final_norm"]
    on_disk = {}
    for shard in sorted(folder.glob("model-*-of-00002.safetensors")):
        on_disk.update(load_file(shard))
    assert "img_adaptor.query" in on_disk and not any(k.startswith("imadpt.") for k in on_disk)
    dims, renamed = load_draft_weights(folder)
    assert dims == published_dims
    assert renamed.keys() == published.keys()
    assert all(torch.equal(renamed[k], published[k]) for k in published)


def test_automodels_own_architecture_has_norms_and_no_fc_biases():
    published_dims, published = load_draft_weights(tiny_draft("qwen2_5_vl"))
    ckpt = inspect_draft(tiny_draft("qwen2_5_vl", layout="automodel"))
    assert ckpt.layout.layout.name == "automodel" and len(ckpt.files) == 2
    d = ckpt.dims
    assert d.input_norm and d.final_norm and not d.fc_bias and d.qkv_bias
    _, state = load_draft_weights(tiny_draft("qwen2_5_vl", layout="automodel"))
    assert set(state) - set(published) == {"layers.0.input_layernorm.weight", "norm.weight"}
    assert set(published) - set(state) == {"fc.bias", "img_fc.bias"}
    assert not torch.allclose(state["norm.weight"], torch.ones_like(state["norm.weight"]))
    assert all(torch.equal(state[k], published[k]) for k in set(state) & set(published))


def test_read_draft_is_for_published_single_file_drafts():
    with pytest.raises(ValueError, match="is in the NeMo Automodel layout.*published "
                                         "single-file drafts"):
        read_draft(tiny_draft("llava", layout="automodel"))
