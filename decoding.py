"""Turning an autoregressive antibody model into sequences: sampling (temperature, top-k,
top-p), greedy decoding and beam search, shared by both antibody families.

A model takes part through two methods:
    model.start_decoding(n, condition) -> state     (caches, encoder memory: batch-first tensors)
    model.next_logits(state, tokens, position) -> logits (B, vocab) for the position after
        `tokens` (the new tokens only; `position` is the index of the first of them)
Every tensor in the state has the batch first, so beam search reorders it with one index.

Sampling draws only from the generator it is given, never the global RNG, so evaluating a
model during training does not change the random stream that training continues with.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from antibody import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from messages import check

METHODS = ("sample", "greedy", "beam")


@dataclass(frozen=True)
class Decoding:
    """How to turn next-token distributions into sequences (--decode and its flags)."""
    method: str = "sample"
    temperature: float = 1.0
    top_k: int = 0          # 0: every token
    top_p: float = 1.0      # 1: every token
    beam_size: int = 5

    def describe(self):
        if self.method == "greedy":
            return "greedy decoding"
        if self.method == "beam":
            return f"beam search (beam size {self.beam_size})"
        parts = [f"temperature {self.temperature:g}"]
        if self.top_k:
            parts.append(f"top-k {self.top_k}")
        if self.top_p < 1:
            parts.append(f"top-p {self.top_p:g}")
        return "sampling, " + ", ".join(parts)


def from_flags(explicit):
    """The Decoding that --decode, --temperature, --top-k, --top-p and --beam-size ask for
    (checked; `explicit` holds the flags given, with --sample's count)."""
    d = Decoding(explicit.get("decode", "sample"), explicit.get("temperature", 1.0),
                 explicit.get("top_k", 0), explicit.get("top_p", 1.0),
                 explicit.get("beam_size", 5))
    check(0 < d.top_p <= 1, f"--top-p must be in (0, 1] (got {d.top_p})")
    check(math.isfinite(d.temperature) and d.temperature > 0,
          f"--temperature must be a positive number (got {d.temperature})")
    check(d.top_k >= 0, f"--top-k must be 0 (all tokens) or more (got {d.top_k})")
    check(d.beam_size > 0, f"--beam-size must be a positive integer (got {d.beam_size})")
    if d.method == "beam":
        check(explicit["sample"] <= d.beam_size,
              f"--decode beam gives at most --beam-size ({d.beam_size}) sequences per "
              f"condition; --sample {explicit['sample']} asks for more")
    return d


def _forbid_invalid_tokens(logits):
    # <pad>, <bos> and <unk> are never valid continuations (<unk> stands for a residue
    # outside the 20 amino acids, which no valid antibody has).
    logits[:, PAD_ID] = float("-inf")
    logits[:, BOS_ID] = float("-inf")
    logits[:, UNK_ID] = float("-inf")
    return logits


def _nucleus(probs, top_p):
    """`probs` with every token outside the top-p nucleus set to 0 (the most likely token is
    always kept); multinomial renormalises."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(dim=-1) - sorted_probs   # mass of the more likely tokens
    sorted_probs[before >= top_p] = 0.0
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs)


def _top_k(probs, k):
    """`probs` with all but the k most likely tokens set to 0."""
    kth = probs.topk(k, dim=-1).values[:, -1:]
    return torch.where(probs >= kth, probs, torch.zeros_like(probs))


def reorder(state, index):
    """The decoding state with its batch rows taken at `index` (beam search)."""
    if isinstance(state, torch.Tensor):
        return state.index_select(0, index)
    if isinstance(state, dict):
        return {k: reorder(v, index) for k, v in state.items()}
    if isinstance(state, list):
        return [reorder(v, index) for v in state]
    return state


@torch.no_grad()
def sample(model, state, n, max_len, generator, decoding, device):
    """(n, <= max_len - 1) token ids after <bos>, each row padded after its <eos>: sampled, or
    with `decoding.method == "greedy"` the most likely token at each step."""
    tokens = torch.full((n, 1), BOS_ID, dtype=torch.long, device=device)
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    out = []
    for position in range(max_len - 1):
        logits = _forbid_invalid_tokens(model.next_logits(state, tokens, position))
        if decoding.method == "greedy":
            nxt = logits.argmax(dim=-1, keepdim=True)
        else:
            probs = F.softmax(logits.float() / decoding.temperature, dim=-1)
            if decoding.top_k:
                probs = _top_k(probs, decoding.top_k)
            if decoding.top_p < 1.0:
                probs = _nucleus(probs, decoding.top_p)
            nxt = torch.multinomial(probs.cpu(), 1, generator=generator).to(device)
        nxt[finished] = PAD_ID
        out.append(nxt)
        finished |= nxt.squeeze(1) == EOS_ID
        tokens = nxt
        if finished.all():
            break
    return torch.cat(out, dim=1).cpu()


@torch.no_grad()
def beam_search(model, state, n, max_len, beam_size, device):
    """The `n` (<= beam_size) most likely sequences of one condition by total log-probability,
    most likely first, as (n, T) token ids after <bos>, padded after <eos>. `state` is that of
    one sequence; the beams' states are its rows, reordered as they branch. Deterministic."""
    beams = torch.full((1, 1), BOS_ID, dtype=torch.long, device=device)   # alive prefixes
    scores = torch.zeros(1, device=device)
    finished = []   # (score, tokens after <bos>, <eos> included)
    step_input = beams
    for position in range(max_len - 1):
        logits = model.next_logits(state, step_input, position)
        logp = F.log_softmax(_forbid_invalid_tokens(logits).float(), dim=-1)
        candidates = (scores[:, None] + logp).flatten()
        top_scores, top = candidates.topk(min(2 * beam_size, candidates.numel()))
        vocab = logp.shape[1]
        keep_rows, keep_tokens, keep_scores = [], [], []
        for score, flat in zip(top_scores.tolist(), top.tolist()):
            row, token = divmod(flat, vocab)
            if token == EOS_ID or position == max_len - 2:
                finished.append((score, torch.cat([beams[row, 1:],
                                                   torch.tensor([token], device=device)])))
            elif len(keep_rows) < beam_size:
                keep_rows.append(row)
                keep_tokens.append(token)
                keep_scores.append(score)
        finished.sort(key=lambda item: -item[0])
        best_alive = max(keep_scores, default=float("-inf"))
        # Log-probabilities only fall as a sequence grows: once n finished sequences beat
        # every live prefix, none of those can overtake them.
        if not keep_rows or (len(finished) >= n and finished[n - 1][0] >= best_alive):
            break
        rows = torch.tensor(keep_rows, device=device)
        new_tokens = torch.tensor(keep_tokens, device=device)[:, None]
        beams = torch.cat([beams[rows], new_tokens], dim=1)
        scores = torch.tensor(keep_scores, device=device)
        state = reorder(state, rows)
        step_input = new_tokens
    best = [tokens for _, tokens in finished[:n]]
    width = max(len(t) for t in best)
    padded = torch.full((len(best), width), PAD_ID, dtype=torch.long)
    for i, t in enumerate(best):
        padded[i, :len(t)] = t.cpu()
    return padded
