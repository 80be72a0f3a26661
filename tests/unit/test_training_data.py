"""The training data pipeline's pieces: samples, loss slots, prompts, the trainable draft."""

from __future__ import annotations

import torch

from vllm_vispec.model.layout import DraftDims
from vllm_vispec.reference import ImageSpan, ReferenceDraft
from vllm_vispec.tiny.prompts import demo_prompts
from vllm_vispec.train.draft import TrainableDraft, initial_weights, loss_slots
from vllm_vispec.train.target_features import Sample, image_spans


def dims() -> DraftDims:
    return DraftDims(hidden_size=16, num_heads=2, num_kv_heads=2, head_dim=8,
                     intermediate_size=32, vocab_size=30, num_q=2, qkv_bias=True,
                     fc_bias=True, rms_norm_eps=1e-6, rope_theta=1e4,
                     max_position_embeddings=128)


def sample(length=12, images=(ImageSpan(2, 6),), answer_start=8) -> Sample:
    g = torch.Generator().manual_seed(0)
    return Sample(list(range(length)), torch.randn(length, 16, generator=g),
                  torch.randn(length, 16, generator=g), list(images), answer_start)


def test_sample_round_trips_through_a_dict():
    s = sample()
    back = Sample.from_dict(s.to_dict())
    assert back.token_ids == s.token_ids and back.images == s.images
    assert torch.equal(back.hidden, s.hidden) and back.answer_start == 8


def test_loss_slots_cover_the_answer_and_skip_image_slots():
    mask = loss_slots(sample(answer_start=4))
    # Slot j predicts token j + 2; the answer starts at token 4 -> from slot 2 on, but
    # slots 2..4 carry image tokens 3..5.
    assert mask.tolist() == [False, False, False, False, False, True, True, True, True, True,
                             True]


def test_image_spans_find_runs_of_the_image_token():
    assert image_spans([1, 9, 9, 2, 9, 3, 9, 9], 9) == [
        ImageSpan(1, 3), ImageSpan(4, 5), ImageSpan(6, 8)]


def test_demo_prompts_are_deterministic_and_carry_their_images():
    a, b = demo_prompts(4, seed=3), demo_prompts(4, seed=3)
    assert [m for m, _ in a] == [m for m, _ in b]
    assert all(len(imgs) == 1 for _, imgs in a)
    assert all(imgs == [] for _, imgs in demo_prompts(3, images=False))


def test_trainable_draft_is_the_reference_and_exports_the_published_keys():
    d = dims()
    embed = torch.randn(30, 16)
    lm_head = torch.randn(30, 16)
    weights = initial_weights(d, embed, seed=1)
    model = TrainableDraft(d, weights, lm_head)
    s = sample()
    out = model(s)
    ref = ReferenceDraft(weights, d, lm_head, embed).sequence(
        s.embeds[:11], s.hidden[:11], s.embeds[11], [ImageSpan(2, 6)])
    torch.testing.assert_close(out, ref)
    assert set(model.published_state_dict()) == set(weights)
    # ViSpec's start: img_fc passes the feature through and ignores the image vector.
    assert torch.equal(weights["img_fc.weight"][:, :16], torch.eye(16))
    model.set_stage(1)
    frozen = {k for k, p in model.trainable.items() if not p.requires_grad}
    assert frozen and all(k.startswith(("imadpt", "img_fc")) for k in frozen)


def test_text_only_draft_reads_token_embeddings_and_has_no_image_modules(tmp_path):
    from vllm_vispec.train.draft import text_only_dims
    from vllm_vispec.train.export import export_eagle_draft, read_eagle_draft
    d = text_only_dims(dims())
    embed, lm_head = torch.randn(30, 16), torch.randn(30, 16)
    weights = initial_weights(d, embed, seed=1, text_only=True)
    assert not any(k.startswith(("imadpt", "img_fc")) or k == "fc.bias" for k in weights)
    model = TrainableDraft(d, weights, lm_head)
    s = sample()
    # vLLM's text-only EAGLE sees the placeholder token's embedding at image slots, not the
    # image features, and keeps every slot.
    ids = torch.tensor(s.token_ids)
    ref = ReferenceDraft(weights, d, lm_head, embed).sequence(
        embed[ids[:11]], s.hidden[:11], embed[ids[11]], [])
    torch.testing.assert_close(model(s), ref)
    out = export_eagle_draft(model, {"text_config": {"bos_token_id": 1}}, tmp_path / "eagle")
    back_dims, back = read_eagle_draft(out)
    assert back_dims == d and set(back) == set(weights)
    with __import__("pytest").raises(ValueError, match="text-only"):
        export_eagle_draft(TrainableDraft(dims(), initial_weights(dims(), embed), lm_head),
                           {}, tmp_path / "bad")


def test_both_drafts_train_in_bf16_autocast():
    from vllm_vispec.train.draft import text_only_dims
    from vllm_vispec.train.trainer import TrainConfig, sample_loss
    for text_only in (False, True):
        d = text_only_dims(dims()) if text_only else dims()
        model = TrainableDraft(d, initial_weights(d, torch.randn(30, 16), text_only=text_only),
                               torch.randn(30, 16))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = sample_loss(model, sample(), TrainConfig(stage=2),
                                  torch.Generator().manual_seed(0))
        loss.backward()
        assert torch.isfinite(loss)
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
