"""A forward pass cut in two: a voter-independent part run once, the rest per voter.

The decoder is called layer by layer (embeddings, ``layers[a:b]``, final norm, LM
head), so a batch can run

    head   tokens before the split, all layers, base weights        (U rows, once)
    tail   tokens after the split, layers [0, first_layer), base    (U rows, once)
    voter  tokens after the split, layers [first_layer, L), each row
           with its own adapter, over the copied cache / hidden states (R rows)

and the LM head only at the positions a score needs. U = distinct (question, split)
units, R = their voter rows. Masks are 4D additive biases (B, 1, Tq, Tkv) built here,
so any attention implementation that accepts them works (sdpa, eager).

Only decoders whose forward is exactly "embed -> layers -> norm -> head" with full
causal attention qualify (``SUPPORTED``); others raise ``Unsupported`` and their
voters keep the plain path.
"""
from __future__ import annotations

from typing import Any

import torch

from ensemble.engines.hf.lora import Unsupported

SUPPORTED = ("llama", "qwen2", "qwen3")  # embed -> layers -> norm -> head, no embedding scale or softcap
# Voter rows per chunk x tail tokens: larger activations spill the CPU caches (SmolLM2, 1
# thread: 32 rows x 120 tokens in one pass cost 14% more than in four chunks).
VOTER_TOKENS = 1024
BLOCK_TOKENS = 128  # tail tokens per voter from which a voter's rows get their own LoRA matmuls


class SplitModel:
    """Direct access to a causal LM's embedding, decoder layers, norm and head."""

    def __init__(self, model: Any) -> None:
        """``model``: the bare transformers model (a PeftModel's ``get_base_model()``)."""
        cfg = model.config
        if cfg.model_type not in SUPPORTED:
            raise Unsupported(f"model_type '{cfg.model_type}' (shared prefixes run on {', '.join(SUPPORTED)})")
        if getattr(cfg, "use_sliding_window", False) and getattr(cfg, "sliding_window", None):
            raise Unsupported("sliding-window attention")
        if cfg._attn_implementation not in ("sdpa", "eager"):
            raise Unsupported(f"attention '{cfg._attn_implementation}' (needs a 4D mask: sdpa or eager)")
        dec = model.get_decoder()
        self.model, self.config = model, cfg
        self.embed, self.layers, self.norm = dec.embed_tokens, dec.layers, dec.norm
        self.rotary, self.head = dec.rotary_emb, model.get_output_embeddings()
        self.dtype = self.embed.weight.dtype
        # last_at reads LlamaAttention's parts (k/v projections, rotary); other decoders run it whole.
        self.can_cut_last = cfg.model_type == "llama"

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.config)

    def run(self, hidden: torch.Tensor, pos: torch.Tensor, bias: torch.Tensor, start: int, stop: int,
            cache: Any = None) -> torch.Tensor:
        """Layers [start, stop) on hidden (B, T, H) at positions pos (B, T); bias (B, 1, T, Tkv)."""
        emb = self.rotary(hidden, position_ids=pos)
        for layer in self.layers[start:stop]:
            hidden = layer(hidden, attention_mask=bias, position_embeddings=emb, position_ids=pos,
                           cache=cache, use_cache=cache is not None)
        return hidden

    def last_at(self, hidden: torch.Tensor, pos: torch.Tensor, bias: torch.Tensor, need: torch.Tensor,
                need_ok: torch.Tensor, cache: Any) -> torch.Tensor:
        """The last layer with outputs at slots ``need`` (R, P) only -> (R, P, H).

        Scores read a few slots; the last layer's queries, attention, o_proj and MLP run
        for those only. The keys / values of the other slots are projected here and put
        in the cache (after any head entries); the layer appends the needed slots' own,
        so keys are [head, other slots, needed slots], and the mask columns follow.
        need_ok (R, P): False for padding entries of ``need`` (masked as keys).
        """
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        layer = self.layers[-1]
        attn = layer.self_attn
        R, T, _ = hidden.shape
        rows = torch.arange(R, device=hidden.device)[:, None]
        hits = torch.zeros((R, T), dtype=torch.long, device=hidden.device)  # padding repeats a slot: count
        hits.index_put_((rows.expand_as(need), need), need_ok.long(), accumulate=True)
        is_need = hits > 0
        n_other = T - is_need.sum(1)  # (R,)
        other = torch.argsort(is_need.to(torch.int8), dim=1, stable=True)[:, :int(n_other.max())]  # not needed first
        other_ok = torch.arange(other.shape[1], device=hidden.device)[None] < n_other[:, None]
        cache = cache if cache is not None else self.new_cache()
        if other.shape[1] > 0:  # else every slot is needed
            x = layer.input_layernorm(hidden[rows, other])  # (R, To, H)
            shape = (R, other.shape[1], -1, attn.head_dim)
            k, v = (proj(x).view(shape).transpose(1, 2) for proj in (attn.k_proj, attn.v_proj))
            cos, sin = self.rotary(x, position_ids=pos[rows, other])
            _, k = apply_rotary_pos_emb(k, k, cos, sin)
            cache.update(k, v, attn.layer_idx)
        Lh = bias.shape[-1] - T
        head = torch.arange(Lh, device=hidden.device)[None].expand(R, Lh)
        cols = torch.cat([head, Lh + other, Lh + need], dim=1)  # (R, Lh + To + P)
        b = bias[:, 0][rows, need]  # (R, P, Lh + T): the needed queries' rows
        b = b.gather(2, cols[:, None, :].expand(-1, need.shape[1], -1))
        key_ok = torch.cat([torch.ones_like(head, dtype=torch.bool), other_ok, need_ok], dim=1)
        b = b.masked_fill(~key_ok[:, None, :], torch.finfo(b.dtype).min)
        h, p = hidden[rows, need], pos[rows, need]
        return layer(h, attention_mask=b[:, None], position_embeddings=self.rotary(h, position_ids=p),
                     position_ids=p, cache=cache, use_cache=True)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, H) last-layer hidden states -> (N, V) logits."""
        return self.head(self.norm(hidden))

    def bias(self, allowed: torch.Tensor) -> torch.Tensor:
        """(B, Tq, Tkv) bool -> (B, 1, Tq, Tkv) additive mask in the compute dtype."""
        b = torch.zeros(allowed.shape, dtype=self.dtype, device=allowed.device)
        return b.masked_fill(~allowed, torch.finfo(self.dtype).min)[:, None]


def head_allowed(mask: torch.Tensor) -> torch.Tensor:
    """Causal attention among left-padded tokens: mask (B, L) 0/1 -> (B, L, L) bool.

    A padding query sees itself only (its output is never used; this avoids empty rows).
    """
    L = mask.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=mask.device).tril()
    eye = torch.eye(L, dtype=torch.bool, device=mask.device)
    return (causal[None] & mask.bool()[:, None, :]) | eye[None]


def sub_cache(split: SplitModel, cache: Any, index: torch.Tensor, start: int = 0) -> Any:
    """A new cache with rows ``index`` (repeats allowed: one per voter) of the layers from ``start`` on."""
    new = split.new_cache()
    for i, layer in enumerate(cache.layers):
        if i >= start and layer.is_initialized and layer.get_seq_length() > 0:
            new.update(layer.keys[index], layer.values[index], i)
    return new


def run_split(split: SplitModel, rows_ctx: Any, *, head_ids: torch.Tensor, head_mask: torch.Tensor,
              tail_ids: torch.Tensor, tail_pos: torch.Tensor, tail_allowed: torch.Tensor,
              unit: torch.Tensor, adapters: list[str], first_layer: int, need: torch.Tensor,
              need_ok: torch.Tensor, keep_cache: bool = False) -> tuple[torch.Tensor, Any]:
    """Run one batch of units; returns (R, P, H) last-layer hidden states (pre-norm) at the
    slots ``need`` and the cache.

    head_ids/head_mask (U, Lh) left-padded (Lh may be 0); tail_ids/tail_pos (U, Tt);
    tail_allowed (U, Tt, Tt) bool; unit (R,) the unit of each voter row; adapters (R,)
    adapter names; rows_ctx(names) the context in which row b uses names[b]; need /
    need_ok (U, P) the tail slots whose outputs are wanted (False: padding).
    keep_cache: select every cache layer per row (generation decodes on from it; its
    ``need`` must then be the last slot, so the cache stays in position order).
    """
    U, Lh = head_ids.shape
    base = ["__base__"] * U
    cache = split.new_cache() if Lh > 0 or keep_cache else None
    if Lh > 0:
        pos = (head_mask.cumsum(-1) - 1).clamp(min=0)
        with rows_ctx(base):
            split.run(split.embed(head_ids), pos, split.bias(head_allowed(head_mask)), 0, split.n_layers, cache)
    Tt = tail_ids.shape[1]
    key_ok = head_mask.bool()[:, None, :].expand(U, Tt, Lh)
    bias = split.bias(torch.cat([key_ok, tail_allowed], dim=2))  # (U, 1, Tt, Lh + Tt)
    hidden = split.embed(tail_ids)  # (U, Tt, H)
    if first_layer > 0:
        with rows_ctx(base):
            hidden = split.run(hidden, tail_pos, bias, 0, first_layer, cache)
    # Scoring: rows in runs of one voter, so each voter's LoRA runs on its own rows only
    # (StackedLoRA blocks), in chunks of about VOTER_TOKENS tail tokens; the output goes back
    # to the callers' order. Generation keeps the order and one chunk: its cache lives on.
    R = len(adapters)
    order = list(range(R)) if keep_cache else sorted(range(R), key=adapters.__getitem__)
    size = R if keep_cache else max(1, VOTER_TOKENS // Tt)
    outs = []
    for c in range(0, R, size):
        idx = torch.tensor(order[c:c + size], dtype=torch.long, device=unit.device)
        u = unit[idx]  # one copy per voter row of everything below
        c_cache = sub_cache(split, cache, u, 0 if keep_cache else first_layer) if cache is not None else None
        names = [adapters[i] for i in order[c:c + size]]
        # Per-voter LoRA matmuls pay off for long runs of rows; short tails (letters) keep the
        # masked stack: one matmul pair per module whatever the number of voters.
        blocks = not keep_cache and len(names) * Tt >= BLOCK_TOKENS * len(set(names))
        with rows_ctx(names, blocks=blocks):
            out, c_cache = _voter_pass(split, hidden[u], tail_pos[u], bias[u], need[u], need_ok[u], first_layer,
                                       c_cache)
        outs.append(out)
    perm = torch.tensor(order, dtype=torch.long, device=unit.device)
    return torch.cat(outs)[torch.argsort(perm)], c_cache


def _voter_pass(split: SplitModel, hidden: torch.Tensor, pos: torch.Tensor, bias: torch.Tensor, need: torch.Tensor,
                need_ok: torch.Tensor, first_layer: int, cache: Any) -> tuple[torch.Tensor, Any]:
    """Layers [first_layer, L) for voter rows; (R, P, H) at the ``need`` slots and the cache."""
    if not split.can_cut_last:
        rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
        return split.run(hidden, pos, bias, first_layer, split.n_layers, cache)[rows, need], cache
    hidden = split.run(hidden, pos, bias, first_layer, split.n_layers - 1, cache)
    cache = cache if cache is not None else split.new_cache()
    return split.last_at(hidden, pos, bias, need, need_ok, cache), cache
