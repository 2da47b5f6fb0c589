"""Test oracles for the text encoder, written from the reference's description (wan/modules/t5.py, tokenizers.py).

`official_encoder_forward` computes the official `T5Encoder` (umt5-xxl: per-block relative position bias, gated
tanh-GELU feed-forward `fc2(fc1(x) * gelu(gate(x)))`, no attention scaling, RMS norms in fp32) straight from a state
dict with the official names. It exists only to check that the key map puts every official weight where it does
the same job in transformers' UMT5EncoderModel; the product never uses it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    x = x * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + eps)
    return weight * x.to(weight.dtype)


def _bucket(rel: torch.Tensor, num_buckets: int, max_dist: int = 128) -> torch.Tensor:
    """Bidirectional T5 relative-position bucket of `rel` = key position - query position."""
    half = num_buckets // 2
    out = (rel > 0).long() * half
    dist = rel.abs()
    exact = half // 2
    large = exact + (torch.log(dist.float() / exact) / math.log(max_dist / exact) * (half - exact)).long()
    large = large.clamp(max=half - 1)
    return out + torch.where(dist < exact, dist, large)


def official_encoder_forward(sd: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`T5Encoder.forward(ids, mask)` of the reference, eval mode, from official-named weights; `[B, L, dim]`."""
    num_layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    x = F.embedding(ids, sd["token_embedding.weight"])
    b, length, _ = x.shape
    pos = torch.arange(length, device=ids.device)
    rel = pos[None, :] - pos[:, None]
    for i in range(num_layers):
        p = f"blocks.{i}."
        table = sd[p + "pos_embedding.embedding.weight"]  # [buckets, heads]
        heads = table.shape[1]
        bias = F.embedding(_bucket(rel, table.shape[0]), table).permute(2, 0, 1)[None]  # [1, N, L, L]
        h = _rms_norm(x, sd[p + "norm1.weight"])
        q = F.linear(h, sd[p + "attn.q.weight"]).view(b, length, heads, -1)
        k = F.linear(h, sd[p + "attn.k.weight"]).view(b, length, heads, -1)
        v = F.linear(h, sd[p + "attn.v.weight"]).view(b, length, heads, -1)
        attn_bias = bias.expand(b, -1, -1, -1).clone()
        attn_bias.masked_fill_(mask.view(b, 1, 1, length) == 0, torch.finfo(x.dtype).min)
        scores = torch.einsum("binc,bjnc->bnij", q, k) + attn_bias
        weights = F.softmax(scores.float(), dim=-1).type_as(scores)
        out = torch.einsum("bnij,bjnc->binc", weights, v).reshape(b, length, -1)
        x = x + F.linear(out, sd[p + "attn.o.weight"])
        h = _rms_norm(x, sd[p + "norm2.weight"])
        gate = F.gelu(F.linear(h, sd[p + "ffn.gate.0.weight"]), approximate="tanh")
        x = x + F.linear(F.linear(h, sd[p + "ffn.fc1.weight"]) * gate, sd[p + "ffn.fc2.weight"])
    return _rms_norm(x, sd["norm.weight"])


def reference_tokenize(tokenizer_folder, prompts: list[str]):
    """The reference's `HuggingfaceTokenizer` call: cleaned prompts, padded to 512 with `</s>`; a transformers
    `BatchEncoding` (`input_ids`, `attention_mask`)."""
    from transformers import AutoTokenizer

    from wan_core.text.cleaning import clean_prompt

    tok = AutoTokenizer.from_pretrained(str(tokenizer_folder), local_files_only=True)
    return tok(
        [clean_prompt(p) for p in prompts],
        padding="max_length",
        truncation=True,
        max_length=512,
        add_special_tokens=True,
        return_tensors="pt",
    )


def reference_encode(sd_official: dict[str, torch.Tensor], tokenizer_folder, prompts: list[str]) -> list[torch.Tensor]:
    """The reference's `T5EncoderModel.__call__`: `reference_tokenize`, the official encoder, each output trimmed to
    its mask sum."""
    batch = reference_tokenize(tokenizer_folder, prompts)
    ids, mask = batch.input_ids, batch.attention_mask
    seq_lens = mask.gt(0).sum(dim=1).long()
    with torch.no_grad():
        context = official_encoder_forward(sd_official, ids, mask)
    return [u[:v] for u, v in zip(context, seq_lens, strict=True)]
