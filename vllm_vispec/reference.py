"""A pure-PyTorch ViSpec draft, written from the method's description: the tests' oracle.

It works on one request at a time, on whole sequences, with no paging and no vLLM: the
simplest faithful reading of ViSpec's draft.

Indexing (EAGLE's one-slot shift): draft slot ``j`` pairs the target's feature ``h_j`` with
token ``t_{j+1}`` and predicts the next feature; its position id is ``j``. Slot ``j`` is an
image slot iff ``t_{j+1}`` is an image token. Each image's slots are replaced by the
adaptor's first ``num_q - 1`` rows ("compressed tokens", fed straight to the layer) at the
span's last positions; its last row is the image's global vector ``g``. Every text slot is
``fc(cat(e_{j+1}, img_fc(cat(h_j, g))))`` with ``g`` the latest earlier image's vector (zero
before the first image). Attention is causal over the compressed sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .model.layout import DraftDims


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Neox-style rotary embedding. ``x`` [n, heads, d], ``positions`` [n]."""
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64,
                                            device=x.device) / d)
    angles = positions.to(x.device).double()[:, None] * inv_freq[None, :]
    cos = torch.cat((angles.cos(), angles.cos()), -1)[:, None, :].to(x.dtype)
    sin = torch.cat((angles.sin(), angles.sin()), -1)[:, None, :].to(x.dtype)
    half = d // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def linear(w: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, w[f"{name}.weight"], w.get(f"{name}.bias"))


@dataclass
class ImageSpan:
    """Token indices ``[start, end)`` of one image's placeholder tokens; a video is one
    span of all its frames' tokens, as in the authors' code."""

    start: int
    end: int


@dataclass
class ReferenceDraft:
    """The draft for one request. Call :meth:`prefill` once, then :meth:`step`."""

    weights: dict[str, torch.Tensor]
    dims: DraftDims
    lm_head: torch.Tensor  # [vocab, hidden], the target's
    embed: torch.Tensor  # [vocab, hidden], the target's
    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    global_vector: torch.Tensor | None = None
    next_position: int = 0

    # ---- modules -------------------------------------------------------------------------
    def adaptor(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """[n, H] -> [num_q, H]: learned queries cross-attend over one image."""
        w, d = self.weights, self.dims
        n = image_embeds.shape[0]
        hd = d.adaptor_head_dim  # hidden / heads, whatever the decoder layer's head_dim
        k = linear(w, "imadpt.k_proj", image_embeds).view(n, d.num_heads, hd)
        v = linear(w, "imadpt.v_proj", image_embeds).view(n, d.num_heads, hd)
        q = w["imadpt.q"].to(image_embeds.dtype)  # [num_q, heads, hd]
        scores = torch.einsum("qhd,nhd->hqn", q, k) * hd ** -0.5
        pooled = torch.einsum("hqn,nhd->qhd", scores.softmax(-1), v)
        return linear(w, "imadpt.o_proj", pooled.reshape(d.num_q, -1))

    def fuse(self, token_embeds: torch.Tensor, hidden: torch.Tensor,
             g: torch.Tensor) -> torch.Tensor:
        feature = hidden
        if "img_fc.weight" in self.weights:  # absent in a text-only EAGLE draft
            feature = linear(self.weights, "img_fc",
                             torch.cat((hidden, g.expand_as(hidden)), -1))
        return linear(self.weights, "fc", torch.cat((token_embeds, feature), -1))

    def layer(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The decoder layer over new slots ``x`` [n, H]; appends their K/V to the cache."""
        w, d = self.weights, self.dims
        p = "layers.0.self_attn"
        n = x.shape[0]
        q = rope(linear(w, f"{p}.q_proj", x).view(n, d.num_heads, d.head_dim), positions,
                 d.rope_theta)
        k = rope(linear(w, f"{p}.k_proj", x).view(n, d.num_kv_heads, d.head_dim), positions,
                 d.rope_theta)
        v = linear(w, f"{p}.v_proj", x).view(n, d.num_kv_heads, d.head_dim)
        self.keys.append(k)
        self.values.append(v)
        keys, values = torch.cat(self.keys), torch.cat(self.values)
        repeat = d.num_heads // d.num_kv_heads
        keys = keys.repeat_interleave(repeat, dim=1)
        values = values.repeat_interleave(repeat, dim=1)
        total = keys.shape[0]
        scores = torch.einsum("qhd,khd->hqk", q, keys) * d.head_dim ** -0.5
        # Causal over the compressed sequence: new slot i sees everything before it.
        visible = (torch.arange(total, device=x.device)[None, :]
                   <= (total - n + torch.arange(n, device=x.device))[:, None])
        scores = scores.masked_fill(~visible[None], float("-inf"))
        attn = torch.einsum("hqk,khd->qhd", scores.softmax(-1), values).reshape(n, -1)
        r = linear(w, f"{p}.o_proj", attn) + x
        hn = rms_norm(r, w["layers.0.post_attention_layernorm.weight"], d.rms_norm_eps)
        mlp = linear(w, "layers.0.mlp.down_proj",
                     F.silu(linear(w, "layers.0.mlp.gate_proj", hn))
                     * linear(w, "layers.0.mlp.up_proj", hn))
        return mlp + r

    def logits(self, out: torch.Tensor) -> torch.Tensor:
        return out @ self.lm_head.T  # no final norm

    # ---- sequences -----------------------------------------------------------------------
    def sequence(self, input_embeds: torch.Tensor, hidden: torch.Tensor,
                 next_embed: torch.Tensor, images: list[ImageSpan]) -> torch.Tensor:
        """The draft over ``L`` target tokens at once: its output per slot, [L, H].

        ``input_embeds`` [L, H]: the target's input embeddings (image features merged);
        ``hidden`` [L, H]: the target's post-norm last hidden states; ``next_embed`` [H]:
        the embedding of the token after the last one. Dropped image slots get zero rows.
        """
        length, h = hidden.shape
        slot_embeds = torch.cat((input_embeds[1:], next_embed[None]))  # e_{j+1} per slot j
        g = hidden.new_zeros(h)
        g_per_slot = hidden.new_zeros(length, h)
        compressed: dict[int, torch.Tensor] = {}
        dropped: set[int] = set()
        cursor = 0
        for span in sorted(images, key=lambda s: s.start):
            first, last = max(span.start - 1, 0), span.end - 2  # the image's slots
            g_per_slot[cursor:first] = g
            rows = self.adaptor(input_embeds[span.start:span.end])
            kept = list(range(last - (self.dims.num_q - 2), last + 1))
            for slot, row in zip(kept, rows[:-1]):
                if slot >= 0:
                    compressed[slot] = row
            dropped.update(s for s in range(first, last + 1) if s not in compressed)
            g = rows[-1]
            cursor = last + 1
        g_per_slot[cursor:] = g
        self.global_vector = g
        x = self.fuse(slot_embeds, hidden, g_per_slot)
        if compressed:
            slots = torch.tensor(list(compressed), device=x.device)
            x = x.index_put((slots,), torch.stack(list(compressed.values())).to(x.dtype))
        keep = torch.tensor([j for j in range(length) if j not in dropped], device=x.device)
        kept_out = self.layer(x[keep], keep)  # bf16 under autocast
        out = kept_out.new_zeros(length, h).index_put((keep,), kept_out)
        self.next_position = length
        return out

    def prefill(self, input_embeds: torch.Tensor, hidden: torch.Tensor, next_embed: torch.Tensor,
                images: list[ImageSpan]) -> torch.Tensor:
        """:meth:`sequence` over a prompt (and accepted tokens); the last slot's output."""
        return self.sequence(input_embeds, hidden, next_embed, images)[-1]

    def step(self, token: int, previous_out: torch.Tensor) -> torch.Tensor:
        """One draft step: the drafted ``token`` with the draft's own previous feature."""
        x = self.fuse(self.embed[token][None], previous_out[None], self.global_vector)
        out = self.layer(x, torch.tensor([self.next_position]))
        self.next_position += 1
        return out[0]

    def propose(self, input_embeds, hidden, next_token: int, images: list[ImageSpan],
                num_tokens: int) -> tuple[list[int], list[torch.Tensor]]:
        """Greedy chain of ``num_tokens`` draft tokens and their logits."""
        out = self.prefill(input_embeds, hidden, self.embed[next_token], images)
        tokens, logits = [], []
        for i in range(num_tokens):
            lg = self.logits(out)
            tokens.append(int(lg.argmax()))
            logits.append(lg)
            if i + 1 < num_tokens:
                out = self.step(tokens[-1], out)
        return tokens, logits
