"""Tiny ViSpec drafts in NeMo Automodel's checkpoint layout, made from the published ones.

Two variants of a published tiny draft, written the way Automodel's export writes them
(its names, its config.json fields, two safetensors shards with their index):

* ``automodel``: Automodel's own architecture. The published tensors, without the ``fc`` /
  ``img_fc`` biases (Automodel's default has none; they are zero in the tiny drafts), plus
  layer 0's input norm and the final norm, with weights away from one so that they count.
* ``automodel-released``: the published draft as Automodel's converter of the released
  checkpoints writes it: the same tensors renamed, and the config flags that pin the
  released architecture (biases on, no input norm on layer 0, no final norm). It computes
  exactly what the published draft computes.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..model.automodel_layout import automodel_config, from_published_name
from ..model.layout import dims_from_config, expected_shapes

VARIANTS = ("automodel", "automodel-released")
SHARDS = 2


def write_sharded(state: dict[str, torch.Tensor], out: Path, shards: int = SHARDS) -> None:
    """``model-0000i-of-0000n.safetensors`` and ``model.safetensors.index.json``."""
    keys = sorted(state)
    per = -(-len(keys) // shards)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k].contiguous() for k in keys[i * per:(i + 1) * per]}
        save_file(part, out / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size()
                                            for t in state.values())},
             "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def build_automodel_draft(published: Path, target: Path, out: Path, variant: str,
                          seed: int = 0) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown Automodel draft variant {variant!r}; choose from {VARIANTS}")
    state = load_file(published / "model.safetensors")
    dims = dims_from_config(json.loads((published / "config.json").read_text()),
                            num_q=state["imadpt.q"].shape[0])
    if variant == "automodel":
        dims = replace(dims, fc_bias=False, input_norm=True, final_norm=True)
        gen = torch.Generator().manual_seed(seed + 1)
        h = dims.hidden_size
        for key in ("layers.0.input_layernorm.weight", "norm.weight"):
            state[key] = 1.0 + 0.2 * torch.randn(h, generator=gen)
        for key in ("fc.bias", "img_fc.bias"):
            if state[key].abs().max() > 0:
                raise ValueError(f"{published} has a non-zero {key}: dropping it would "
                                 "change the draft")
            del state[key]
    assert set(state) == set(expected_shapes(dims))
    target_cfg = json.loads((target / "config.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(
        automodel_config(dims, target_cfg.get("text_config", target_cfg)), indent=2))
    # fp32 like the published tiny drafts (Automodel's own exports are bf16).
    write_sharded({from_published_name(k): v for k, v in state.items()}, out)
