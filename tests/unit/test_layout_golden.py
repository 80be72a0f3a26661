"""Golden layouts: the tensors of a ViSpec draft for every supported target, in the published
layout and in NeMo Automodel's (Qwen3-VL, which has no published drafts: Automodel's only),
as safetensors headers (no weights), recognised and checked strictly; and the refusals of
ambiguous, partial and unservable checkpoints.

The tensor lists are written out here from the two projects' module definitions (ViSpec's
``cnets_ours`` for the published drafts, Automodel's ``VispecDraftModel`` on top of its
EAGLE-1/2 draft), not from vllm-vispec's own layout code.
"""

from __future__ import annotations

import copy
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from vllm_vispec.model.checkpoint import check_against_target, inspect_draft, prepare_draft


@dataclass(frozen=True)
class Target:
    """A target's text config (HF config.json) as far as the draft's shapes go."""

    hidden: int
    heads: int
    kv_heads: int
    inter: int  # the dense MLP's; on Qwen3-VL-MoE the one Automodel's (dense) draft reads
    vocab: int
    layers: int
    family: str  # "llava", "qwen2.5-vl", "qwen3-vl" or "qwen3-vl-moe"
    head_dim: int | None = None  # explicit in Qwen3-VL's config, else hidden / heads
    moe_inter: int | None = None  # Qwen3-VL-MoE's experts: the target's, not the draft's
    experts: int | None = None
    tied: bool = False  # tie_word_embeddings (Qwen3-VL-2B, 4B): irrelevant to the draft

    @property
    def qwen(self) -> bool:
        return self.family != "llava"

    @property
    def layer_head_dim(self) -> int:
        return self.head_dim or self.hidden // self.heads


LLAVA_7B = Target(4096, 32, 32, 11008, 32064, 32, family="llava")
LLAVA_13B = Target(5120, 40, 40, 13824, 32064, 40, family="llava")
# Targets with published (JLKang/ViSpec-*) drafts: both layouts apply.
TARGETS = {
    "llava-hf/llava-1.5-7b-hf": LLAVA_7B,
    "llava-hf/llava-1.5-13b-hf": LLAVA_13B,
    "llava-hf/llava-v1.6-vicuna-7b-hf": LLAVA_7B,
    "llava-hf/llava-v1.6-vicuna-13b-hf": LLAVA_13B,
    "Qwen/Qwen2.5-VL-3B-Instruct": Target(2048, 16, 2, 11008, 151936, 36, family="qwen2.5-vl"),
    "Qwen/Qwen2.5-VL-7B-Instruct": Target(3584, 28, 4, 18944, 152064, 28, family="qwen2.5-vl"),
}
# Qwen3-VL has no published ViSpec draft: only Automodel's layout applies. Heads are 128
# wide whatever hidden / heads is (4B, 32B and the MoE: heads x 128 != hidden).
QWEN3_VL_TARGETS = {
    "Qwen/Qwen3-VL-2B-Instruct": Target(2048, 16, 8, 6144, 151936, 28, "qwen3-vl", 128,
                                        tied=True),
    "Qwen/Qwen3-VL-4B-Instruct": Target(2560, 32, 8, 9728, 151936, 36, "qwen3-vl", 128,
                                        tied=True),
    "Qwen/Qwen3-VL-8B-Instruct": Target(4096, 32, 8, 12288, 151936, 36, "qwen3-vl", 128),
    "Qwen/Qwen3-VL-32B-Instruct": Target(5120, 64, 8, 25600, 151936, 64, "qwen3-vl", 128),
    "Qwen/Qwen3-VL-30B-A3B-Instruct": Target(2048, 32, 4, 6144, 151936, 48, "qwen3-vl-moe",
                                             128, moe_inter=768, experts=128),
}
AUTOMODEL_TARGETS = {**TARGETS, **QWEN3_VL_TARGETS}
ROPE_THETA = {"llava": 1e4, "qwen2.5-vl": 1e6, "qwen3-vl": 5e6, "qwen3-vl-moe": 5e6}
NUM_Q = 2


def published_tensors(t: Target) -> dict[str, tuple[int, ...]]:
    """The released draft: one layer without input norm, no final norm, fc/img_fc with
    bias, full multi-head attention, q/k/v biases on Qwen (also on the adaptor's k/v)."""
    h, i, v, d = t.hidden, t.inter, t.vocab, t.hidden // t.heads
    out = {
        "embed_tokens.weight": (v, h),
        "fc.weight": (h, 2 * h), "fc.bias": (h,),
        "img_fc.weight": (h, 2 * h), "img_fc.bias": (h,),
        "imadpt.q": (NUM_Q, t.heads, d),
        "imadpt.k_proj.weight": (h, h), "imadpt.v_proj.weight": (h, h),
        "imadpt.o_proj.weight": (h, h),
        "layers.0.self_attn.q_proj.weight": (h, h), "layers.0.self_attn.k_proj.weight": (h, h),
        "layers.0.self_attn.v_proj.weight": (h, h), "layers.0.self_attn.o_proj.weight": (h, h),
        "layers.0.mlp.gate_proj.weight": (i, h), "layers.0.mlp.up_proj.weight": (i, h),
        "layers.0.mlp.down_proj.weight": (h, i),
        "layers.0.post_attention_layernorm.weight": (h,),
    }
    if t.qwen:
        for key in ("layers.0.self_attn.q_proj", "layers.0.self_attn.k_proj",
                    "layers.0.self_attn.v_proj", "imadpt.k_proj", "imadpt.v_proj"):
            out[f"{key}.bias"] = (h,)
    return out


def published_config(t: Target) -> dict:
    return {  # as in the released config.json files (architectures copied from the target)
        "architectures": ["Qwen2_5_VLForConditionalGeneration" if t.qwen
                          else "LlavaNextForConditionalGeneration"],
        "hidden_size": t.hidden, "num_attention_heads": t.heads,
        "num_key_value_heads": t.heads, "intermediate_size": t.inter, "vocab_size": t.vocab,
        "num_hidden_layers": 1, "rms_norm_eps": 1e-6 if t.qwen else 1e-5,
        "max_position_embeddings": 8192 if t.qwen else 4096, "rope_scaling": None,
        **({"rope_theta": 1e6, "qkv_bias": True} if t.qwen else {}),
    }


def automodel_tensors(t: Target, pinned: bool = True) -> dict[str, tuple[int, ...]]:
    """Automodel's export. ``pinned``: its ViSpec recipe pins the draft to ViSpec's
    architecture (full multi-head attention, q/k/v and fc/img_fc biases); before that, the
    draft copied the target's GQA and had no bias anywhere (nor does a Qwen2.5-VL or
    Qwen3-VL text config ask for one). The layer's heads are the config's ``head_dim``
    wide, the adaptor's ``hidden / heads``."""
    h, i, v, a, d = t.hidden, t.inter, t.vocab, t.hidden // t.heads, t.layer_head_dim
    q, kv = t.heads * d, (t.heads if pinned else t.kv_heads) * d
    out = {
        "embed_tokens.weight": (v, h),
        "fc.weight": (h, 2 * h),
        "img_fc.weight": (h, 2 * h),
        "img_adaptor.query": (NUM_Q, t.heads, a),
        "img_adaptor.k_proj.weight": (h, h), "img_adaptor.v_proj.weight": (h, h),
        "img_adaptor.o_proj.weight": (h, h),
        "layers.0.input_layernorm.weight": (h,),
        "layers.0.self_attn.q_proj.weight": (q, h), "layers.0.self_attn.k_proj.weight": (kv, h),
        "layers.0.self_attn.v_proj.weight": (kv, h), "layers.0.self_attn.o_proj.weight": (h, q),
        "layers.0.mlp.gate_proj.weight": (i, h), "layers.0.mlp.up_proj.weight": (i, h),
        "layers.0.mlp.down_proj.weight": (h, i),
        "layers.0.post_attention_layernorm.weight": (h,),
        "norm.weight": (h,),
    }
    if pinned:
        out.update({"fc.bias": (h,), "img_fc.bias": (h,),
                    "layers.0.self_attn.q_proj.bias": (q,),
                    "layers.0.self_attn.k_proj.bias": (kv,),
                    "layers.0.self_attn.v_proj.bias": (kv,),
                    "img_adaptor.k_proj.bias": (h,), "img_adaptor.v_proj.bias": (h,)})
    return out


QWEN3_VL_TEXT = {  # what the Qwen3-VL text configs share, as transformers 5 writes them
    "rms_norm_eps": 1e-6, "max_position_embeddings": 262144, "attention_bias": False,
    "rope_parameters": {"rope_type": "default", "rope_theta": 5000000,
                        "mrope_section": [24, 20, 20], "mrope_interleaved": True},
}
FAMILY_TEXT = {
    "llava": {"model_type": "llama", "rms_norm_eps": 1e-5, "max_position_embeddings": 4096,
              "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}},
    "qwen2.5-vl": {"model_type": "qwen2_5_vl_text", "rms_norm_eps": 1e-6,
                   "max_position_embeddings": 128000,
                   "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24],
                                       "rope_theta": 1000000.0}},
    "qwen3-vl": {"model_type": "qwen3_vl_text", **QWEN3_VL_TEXT},
    "qwen3-vl-moe": {"model_type": "qwen3_vl_moe_text", **QWEN3_VL_TEXT},
}


def automodel_config(t: Target, pinned: bool = True) -> dict:
    """The target's text config as Automodel's export serialises it, with the draft's
    fields set on it (``num_hidden_layers`` stays the target's)."""
    cfg = {
        "architectures": ["VispecDraftModel"],
        **FAMILY_TEXT[t.family],
        "hidden_size": t.hidden, "num_attention_heads": t.heads,
        "num_key_value_heads": t.heads if pinned else t.kv_heads,
        "intermediate_size": t.inter, "vocab_size": t.vocab, "num_hidden_layers": t.layers,
        "hidden_act": "silu", "attention_dropout": 0.0, "tie_word_embeddings": t.tied,
        "dtype": "bfloat16", "draft_num_hidden_layers": 1, "vispec_num_query_tokens": NUM_Q,
    }
    if t.head_dim:
        cfg["head_dim"] = t.head_dim
    if t.experts:  # transformers 5 writes num_experts as num_local_experts
        cfg.update(moe_intermediate_size=t.moe_inter, num_local_experts=t.experts,
                   num_experts_per_tok=8, decoder_sparse_step=1, mlp_only_layers=[],
                   norm_topk_prob=True, router_aux_loss_coef=0.001, sliding_window=None)
    if pinned:
        cfg.update(qkv_bias=True, fc_bias=True)
    return cfg


def write_header_only(path: Path, tensors: dict[str, tuple[int, ...]]) -> None:
    """A valid safetensors file (bf16) whose data is one sparse hole: the header is all a
    layout check reads."""
    header, offset = {}, 0
    for name, shape in sorted(tensors.items()):
        size = 2
        for n in shape:
            size *= n
        header[name] = {"dtype": "BF16", "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        f.truncate(8 + len(blob) + offset)


def write_draft(folder: Path, tensors: dict, config: dict, shards: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    if shards == 1:
        write_header_only(folder / "model.safetensors", tensors)
        return folder
    keys = sorted(tensors)
    weight_map = {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: tensors[k] for k in keys[s::shards]}
        write_header_only(folder / name, part)
        weight_map.update(dict.fromkeys(part, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": weight_map}))
    return folder


# ---- every target, both layouts ------------------------------------------------------

@pytest.mark.parametrize("target", list(TARGETS))
def test_published_draft_of_every_target_is_recognised_exactly(target, tmp_path):
    t = TARGETS[target]
    ckpt = inspect_draft(write_draft(tmp_path / "d", published_tensors(t), published_config(t)))
    d = ckpt.dims
    assert ckpt.layout.layout.name == "published" and ckpt.layout.prefix == ""
    assert (d.hidden_size, d.num_heads, d.num_kv_heads, d.head_dim, d.intermediate_size,
            d.vocab_size, d.num_q) == (t.hidden, t.heads, t.heads, t.hidden // t.heads,
                                       t.inter, t.vocab, NUM_Q)
    assert (d.qkv_bias, d.fc_bias, d.o_proj_bias, d.mlp_bias) == (t.qwen, True, False, False)
    assert not d.input_norm and not d.final_norm
    assert d.rope_theta == ROPE_THETA[t.family]
    check_against_target(d, "d", target, t.hidden, t.vocab)


VARIANTS = pytest.mark.parametrize("pinned", [True, False],
                                   ids=["vispec-architecture", "target-gqa"])


@VARIANTS
@pytest.mark.parametrize("target", list(AUTOMODEL_TARGETS))
def test_automodel_draft_of_every_target_is_recognised_exactly(target, pinned, tmp_path):
    t = AUTOMODEL_TARGETS[target]
    folder = write_draft(tmp_path / "d", automodel_tensors(t, pinned),
                         automodel_config(t, pinned), shards=2)
    ckpt = inspect_draft(folder)
    d = ckpt.dims
    assert ckpt.layout.layout.name == "automodel" and len(ckpt.files) == 2
    assert (d.hidden_size, d.num_heads, d.num_kv_heads, d.head_dim, d.intermediate_size,
            d.vocab_size, d.num_q) == (t.hidden, t.heads, t.heads if pinned else t.kv_heads,
                                       t.layer_head_dim, t.inter, t.vocab, NUM_Q)
    assert d.adaptor_head_dim == t.hidden // t.heads
    assert (d.qkv_bias, d.fc_bias, d.o_proj_bias, d.mlp_bias) == (pinned, pinned, False, False)
    assert d.input_norm and d.final_norm
    assert d.rms_norm_eps == (1e-6 if t.qwen else 1e-5)
    assert d.rope_theta == ROPE_THETA[t.family]
    check_against_target(d, "d", target, t.hidden, t.vocab)


@VARIANTS
@pytest.mark.parametrize("target", list(QWEN3_VL_TARGETS))
def test_served_qwen3_vl_draft_keeps_head_dim_and_kv_heads(target, pinned, tmp_path,
                                                           monkeypatch):
    monkeypatch.setenv("VLLM_VISPEC_CACHE_DIR", str(tmp_path / "cache"))
    t = QWEN3_VL_TARGETS[target]
    config = automodel_config(t, pinned)
    folder = write_draft(tmp_path / "d", automodel_tensors(t, pinned), config)
    served = json.loads((prepare_draft(str(folder), target, t.hidden, t.vocab, 262144)
                         / "config.json").read_text())
    # 128, not hidden / heads; the config's KV heads, not the query heads (vLLM sizes the
    # draft's KV cache from the top-level fields, the draft model reads the dims).
    assert ((served["vispec"]["dims"]["head_dim"], served["vispec"]["dims"]["num_kv_heads"],
             served["head_dim"], served["num_key_value_heads"])
            == (128, config["num_key_value_heads"], 128, config["num_key_value_heads"]))


@VARIANTS
@pytest.mark.parametrize("target", list(QWEN3_VL_TARGETS))
def test_qwen3_vl_configs_here_are_what_transformers_exports(target, pinned, tmp_path):
    """Automodel's recipe deep-copies the target's text config, sets the draft's fields
    on it and saves it: every field written here is what transformers serialises, and
    the whole export reads as the same draft."""
    transformers = pytest.importorskip("transformers")
    t = QWEN3_VL_TARGETS[target]
    mine = automodel_config(t, pinned)
    text = {k: v for k, v in mine.items()
            if k not in ("architectures", "draft_num_hidden_layers", "vispec_num_query_tokens",
                         "qkv_bias", "fc_bias", "rope_parameters", "num_local_experts")}
    text.update(num_key_value_heads=t.kv_heads, rope_theta=5000000,
                rope_scaling={"mrope_interleaved": True, "mrope_section": [24, 20, 20],
                              "rope_type": "default"})  # as the hub's config.json has them
    if t.experts:
        text.update(num_experts=t.experts)
    cls = (transformers.Qwen3VLMoeConfig if t.experts else transformers.Qwen3VLConfig)
    draft = copy.deepcopy(cls(text_config=text).get_text_config())
    draft.architectures = ["VispecDraftModel"]
    draft.draft_num_hidden_layers, draft.vispec_num_query_tokens = 1, NUM_Q
    if pinned:  # apply_vispec_draft_architecture
        draft.num_key_value_heads, draft.qkv_bias, draft.fc_bias = t.heads, True, True
    export = json.loads(draft.to_json_string(use_diff=True))
    assert {k: export.get(k) for k in mine} == mine
    tensors = automodel_tensors(t, pinned)
    assert (inspect_draft(write_draft(tmp_path / "real", tensors, export)).dims
            == inspect_draft(write_draft(tmp_path / "mine", tensors, mine)).dims)


def test_the_llava_7b_layouts_in_full():
    """One pair written out key by key: the rest of this file builds on these lists."""
    published = published_tensors(LLAVA_7B)
    automodel = automodel_tensors(LLAVA_7B)
    renamed = {"imadpt.q": "img_adaptor.query", "imadpt.k_proj.weight":
               "img_adaptor.k_proj.weight", "imadpt.v_proj.weight": "img_adaptor.v_proj.weight",
               "imadpt.o_proj.weight": "img_adaptor.o_proj.weight"}
    assert {renamed.get(k, k): s for k, s in published.items()} == {
        k: s for k, s in automodel.items()
        if k not in ("layers.0.input_layernorm.weight", "norm.weight")
        and not k.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias"))}
    assert len(published) == 17 and len(automodel) == 24
    assert automodel["img_adaptor.query"] == (2, 32, 128)
    assert automodel["embed_tokens.weight"] == (32064, 4096)


def test_prepared_automodel_draft_links_its_shards_and_keeps_its_variant(tmp_path,
                                                                         monkeypatch):
    monkeypatch.setenv("VLLM_VISPEC_CACHE_DIR", str(tmp_path / "cache"))
    t = TARGETS["Qwen/Qwen2.5-VL-7B-Instruct"]
    folder = write_draft(tmp_path / "d", automodel_tensors(t), automodel_config(t), shards=3)
    out = prepare_draft(str(folder), "qwen", t.hidden, t.vocab, target_max_len=32768)
    cfg = json.loads((out / "config.json").read_text())
    dims = cfg["vispec"]["dims"]
    assert dims["input_norm"] and dims["final_norm"] and dims["fc_bias"]
    assert cfg["max_position_embeddings"] == 128000  # the config's, above the target's
    linked = sorted(p.name for p in out.iterdir() if p.is_symlink())
    assert linked == ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                      "model-00003-of-00003.safetensors", "model.safetensors.index.json"]


# ---- recognition and its refusals ----------------------------------------------------

QWEN_3B = TARGETS["Qwen/Qwen2.5-VL-3B-Instruct"]


def refused(tmp_path, tensors, config, shards=1) -> str:
    with pytest.raises(ValueError) as err:
        inspect_draft(write_draft(tmp_path / "d", tensors, config, shards))
    return str(err.value)


def test_model_prefix_on_every_key_is_accepted(tmp_path):
    tensors = {f"model.{k}": s for k, s in automodel_tensors(QWEN_3B).items()}
    ckpt = inspect_draft(write_draft(tmp_path / "d", tensors, automodel_config(QWEN_3B)))
    assert ckpt.layout.prefix == "model." and ckpt.dims.final_norm
    assert ckpt.layout.published_name("model.img_adaptor.query") == "imadpt.q"


def test_prefix_on_some_keys_names_them(tmp_path):
    tensors = automodel_tensors(QWEN_3B)
    tensors["model.norm.weight"] = tensors.pop("norm.weight")
    msg = refused(tmp_path, tensors, automodel_config(QWEN_3B))
    assert ("does not match the NeMo Automodel layout" in msg
            and "missing keys: ['norm.weight']" in msg
            and "unexpected keys: ['model.norm.weight']" in msg), msg


def test_keys_of_both_layouts_are_ambiguous(tmp_path):
    tensors = {**automodel_tensors(QWEN_3B), "imadpt.q": (2, 16, 128)}
    msg = refused(tmp_path, tensors, automodel_config(QWEN_3B))
    assert ("is ambiguous: it has image adaptor keys of the published layout (['imadpt.q']) "
            "and of the NeMo Automodel layout (['img_adaptor.k_proj.bias', "
            "'img_adaptor.k_proj.weight', 'img_adaptor.o_proj.weight'] and 3 more)") in msg, msg


def test_partial_automodel_checkpoint_names_a_few_keys_then_a_count(tmp_path):
    tensors = {k: s for k, s in automodel_tensors(QWEN_3B).items()
               if not k.startswith("layers.0.")}
    tensors["layers.1.mlp.up_proj.weight"] = (11008, 2048)
    msg = refused(tmp_path, tensors, automodel_config(QWEN_3B), shards=2)
    assert "(2 shards) does not match the NeMo Automodel layout" in msg, msg
    assert ("missing keys: ['layers.0.input_layernorm.weight', "
            "'layers.0.mlp.down_proj.weight', 'layers.0.mlp.gate_proj.weight', "
            "'layers.0.mlp.up_proj.weight', 'layers.0.post_attention_layernorm.weight', "
            "'layers.0.self_attn.k_proj.bias'] and 6 more") in msg, msg
    assert "unexpected keys: ['layers.1.mlp.up_proj.weight']" in msg, msg


def test_norms_missing_from_an_automodel_draft_are_named(tmp_path):
    # A released draft renamed without the config flags saying it has no norms.
    tensors = {k: s for k, s in automodel_tensors(QWEN_3B).items()
               if not k.endswith("norm.weight") or "post_attention" in k}
    msg = refused(tmp_path, tensors, automodel_config(QWEN_3B))
    assert "missing keys: ['layers.0.input_layernorm.weight', 'norm.weight']" in msg, msg


def test_released_architecture_flags_drop_the_norms(tmp_path):
    tensors = {k: s for k, s in automodel_tensors(QWEN_3B).items()
               if not k.endswith("norm.weight") or "post_attention" in k}
    config = {**automodel_config(QWEN_3B), "draft_skip_first_input_norm": True,
              "draft_apply_final_norm": False}
    dims = inspect_draft(write_draft(tmp_path / "d", tensors, config)).dims
    assert not dims.input_norm and not dims.final_norm


def test_automodel_shape_mismatch_uses_its_names(tmp_path):
    tensors = automodel_tensors(QWEN_3B)
    tensors["img_adaptor.k_proj.weight"] = (2048, 1024)
    msg = refused(tmp_path, tensors, automodel_config(QWEN_3B))
    assert ("shape mismatches: ['img_adaptor.k_proj.weight: checkpoint (2048, 1024), "
            "expected (2048, 2048)']") in msg, msg


def test_automodel_draft_without_queries_is_named(tmp_path):
    tensors = automodel_tensors(QWEN_3B)
    del tensors["img_adaptor.query"]
    msg = refused(tmp_path, tensors, automodel_config(QWEN_3B))
    assert "has no image adaptor queries 'img_adaptor.query'" in msg, msg


def test_no_adaptor_of_either_layout_is_an_eagle_draft(tmp_path):
    tensors = {k: s for k, s in automodel_tensors(QWEN_3B).items()
               if not k.startswith(("img_adaptor.", "img_fc."))}
    msg = refused(tmp_path, tensors, automodel_config(QWEN_3B))
    assert ("has no image adaptor: neither 'imadpt.q' (published layout) nor "
            "'img_adaptor.query' (NeMo Automodel layout): is this an EAGLE draft") in msg, msg


@pytest.mark.parametrize("edit,problem", [
    ({"draft_num_hidden_layers": 2},
     "draft_num_hidden_layers = 2: vllm-vispec serves one-layer ViSpec drafts"),
    ({"draft_num_hidden_layers": None},  # unset: Automodel takes the target's layer count
     "num_hidden_layers = 36: vllm-vispec serves one-layer ViSpec drafts"),
    ({"vispec_num_query_tokens": 4},
     "vispec_num_query_tokens = 4, but img_adaptor.query has 2 queries"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}},
     "RoPE type 'yarn': vllm-vispec's draft applies the default RoPE only"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor = 0.5"),
])
def test_unservable_automodel_variants_are_refused(tmp_path, edit, problem):
    config = {**automodel_config(QWEN_3B), **edit}
    config = {k: v for k, v in config.items() if v is not None}
    msg = refused(tmp_path, automodel_tensors(QWEN_3B), config)
    assert msg.startswith("NeMo Automodel ViSpec draft config.json: " + problem), msg


def test_legacy_rope_fields_are_read_like_automodel_reads_them(tmp_path):
    config = {k: v for k, v in automodel_config(QWEN_3B).items() if k != "rope_parameters"}
    config.update(rope_theta=1e6, rope_scaling={"type": "default", "rope_type": "default",
                                                "mrope_section": [16, 24, 24]})
    dims = inspect_draft(write_draft(tmp_path / "d", automodel_tensors(QWEN_3B), config)).dims
    assert dims.rope_theta == 1e6


def test_biases_follow_automodels_flags(tmp_path):
    t = QWEN_3B
    tensors = automodel_tensors(t, pinned=False)
    # attention_bias: q/k/v and o_proj (the adaptor's k/v too, never its o_proj); mlp_bias.
    kv = t.kv_heads * (t.hidden // t.heads)
    tensors.update({"layers.0.self_attn.q_proj.bias": (t.hidden,),
                    "layers.0.self_attn.k_proj.bias": (kv,),
                    "layers.0.self_attn.v_proj.bias": (kv,),
                    "layers.0.self_attn.o_proj.bias": (t.hidden,),
                    "img_adaptor.k_proj.bias": (t.hidden,),
                    "img_adaptor.v_proj.bias": (t.hidden,),
                    "layers.0.mlp.gate_proj.bias": (t.inter,),
                    "layers.0.mlp.up_proj.bias": (t.inter,),
                    "layers.0.mlp.down_proj.bias": (t.hidden,)})
    config = {**automodel_config(t, pinned=False), "attention_bias": True, "mlp_bias": True}
    dims = inspect_draft(write_draft(tmp_path / "d", tensors, config)).dims
    assert dims.qkv_bias and dims.o_proj_bias and dims.mlp_bias and not dims.fc_bias
    del tensors["layers.0.self_attn.o_proj.bias"]
    msg = refused(tmp_path / "again", tensors, config)
    assert "missing keys: ['layers.0.self_attn.o_proj.bias']" in msg, msg


def test_an_automodel_checkpoint_step_is_read_from_its_export(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_VISPEC_CACHE_DIR", str(tmp_path / "cache"))
    step = tmp_path / "checkpoints" / "epoch_0_step_100"
    write_draft(step / "model" / "consolidated", automodel_tensors(QWEN_3B),
                automodel_config(QWEN_3B), shards=2)
    out = prepare_draft(str(step), "qwen", QWEN_3B.hidden, QWEN_3B.vocab, 4096)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["vispec"]["source"] == str(step / "model" / "consolidated")
