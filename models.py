"""Model configs and modules: the antibody transformer, the DNA transport GNN and the DNA
Hamiltonian GNN.

Each family has a table of named sizes (`CONFIGS`). A config is a frozen dataclass; the
checkpoint stores `asdict(config)` and `build_model(config_dict)` rebuilds the same module from
it, so a checkpoint is self-describing. A new family adds its config class, its rows and its
module here (`_FAMILY_CLASSES`); what training does with it is its module in families/.
"""

import math
from dataclasses import MISSING as MISSING_FIELD
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from antibody import PAD_ID, VOCAB_SIZE
from decoding import Decoding, beam_search, sample
import tight_binding
from dna import (EDGE_BACKBONE_5TO3, EDGE_CONTACT, EDGE_HBOND, NODE_FEATURES, NUM_EDGE_TYPES)


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TransformerConfig:
    name: str
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    model: str = "transformer"
    vocab_size: int = VOCAB_SIZE
    max_len: int = 160  # tokens, <bos> and <eos> included; real VH domains are 111-136 residues
    dropout: float = 0.1
    label_smoothing: float = 0.0   # of the training loss only (--label-smoothing)


# Paired data ("HEAVY|LIGHT" as <bos> heavy <sep> light <eos>) need a longer context: real VH
# are up to 136 residues and VL up to 119, so 258 tokens; the families set this max_len.
PAIRED_MAX_LEN = 264


@dataclass(frozen=True)
class Seq2SeqConfig:
    """The antigen- and affinity-conditioned encoder-decoder. `n_layers` is the depth of the
    encoder and of the decoder each. Antigens longer than `max_antigen_len` residues are
    cropped by the data reader, with a warning that counts them."""
    name: str
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    model: str = "seq2seq"
    vocab_size: int = VOCAB_SIZE
    max_len: int = PAIRED_MAX_LEN
    max_antigen_len: int = 640   # the SARS-CoV-2 spike's S2 region (588 residues) fits
    dropout: float = 0.1
    # In training, each record's antigen and pKd are replaced by the learned "none" condition
    # with this probability each, so that one model samples with or without either.
    condition_dropout: float = 0.1
    # Of the training loss only. The seed's 0.1 is --label-smoothing 0.1: it teaches the model
    # to put 10% of each token's probability on the 24 others, so samples drawn at
    # temperature 1 carry a random residue at about every tenth position (see the README).
    label_smoothing: float = 0.0


@dataclass(frozen=True)
class GNNConfig:
    name: str
    hidden: int
    n_layers: int
    model: str = "gnn"
    node_features: int = NODE_FEATURES
    num_edge_types: int = NUM_EDGE_TYPES
    n_energies: int = 100
    dropout: float = 0.0
    loss: str = "mse"           # or "huber" (--loss), on log10 values
    huber_delta: float = 1.0    # decades (--huber-delta)


@dataclass(frozen=True)
class HGNNConfig(GNNConfig):
    """The Hamiltonian GNN. `energy_min`/`energy_max` are the ends of the data's energy grid
    (the grid itself is a buffer of the module); on-site energies are predicted relative to
    its middle.

    `eta` (eV) is the model's NEGF broadening: 1e-3, a trade between what the model can fit
    and how well it trains. The built-in spectra use 1e-12 and are sampled on a grid. With
    an eta that small, a site that barely touches the electrodes (most of the complementary
    strand) is a resonance of width ~eta; wherever one of a batch's ~1,000 levels passes
    within ~sqrt(eta / DOS) of one of the 100 grid points, which in training is always
    happening somewhere, its eta / (E - e)^2 tail spikes log10 DOS (and T) by decades with a
    gradient up to ~1/eta. A broader eta smooths those spikes into bumps the gradient can
    follow. Measured (tiny, 900 built-in duplexes, lr 1e-3, 8 epochs, seeds 0 and 1): with
    eta 1e-3 train loss 1.65 and 1.00, val R² of T 0.94 and 0.97, of DOS 0.67 and 0.72; with
    1e-4 (seed 0) loss 2.8, T 0.91, DOS 0.66; with 1e-6 and 1e-12 the loss kept jumping back
    up (ending at 6.8-12.3; T R² 0.62-0.80, DOS 0.31-0.47). The price would be a ceiling on
    DOS: the true H gives, with eta 1e-3, targets whose DOS has R² 0.89 (MAE 0.15 decades)
    against the built-in ones (1e-4: 0.979, 1e-2: 0.54); T barely moves (0.9999).

    So the broadening is for training only: in eval mode (validation, --predict) the NEGF
    uses `predict_eta`, the physics' own 1e-12, and a learnt H gives the data's spectra
    without the broadening's tails. Measured on one model (tiny, 4,000 built-in duplexes,
    30 epochs, 400 held out): DOS R² 0.908 evaluated with eta 1e-3, 0.979 with 1e-4, 0.9915
    with 1e-12; T R² 0.9995 for all.
    """
    model: str = "hgnn"
    energy_min: float = -3.0
    energy_max: float = 3.0
    eta: float = 1e-3
    # The broadening of validation and prediction: the physics' own (the built-in data's
    # 1e-12). None, in checkpoints written before this field, means `eta`.
    predict_eta: float = None


CONFIGS = {
    "transformer": {
        "tiny": TransformerConfig("tiny", d_model=128, n_layers=4, n_heads=4, d_ff=640),
        "small": TransformerConfig("small", d_model=256, n_layers=7, n_heads=8, d_ff=1024),
        "medium": TransformerConfig("medium", d_model=512, n_layers=14, n_heads=8, d_ff=2048),
        "large": TransformerConfig("large", d_model=768, n_layers=16, n_heads=12, d_ff=3072),
    },
    # The antibody seed's size table: d_model 128/256/512/768, encoder and decoder layers
    # 2/3/6/8 each, heads 4/8/8/12, feed-forward 4x.
    "seq2seq": {
        "tiny": Seq2SeqConfig("tiny", d_model=128, n_layers=2, n_heads=4, d_ff=512),
        "small": Seq2SeqConfig("small", d_model=256, n_layers=3, n_heads=8, d_ff=1024),
        "medium": Seq2SeqConfig("medium", d_model=512, n_layers=6, n_heads=8, d_ff=2048),
        "large": Seq2SeqConfig("large", d_model=768, n_layers=8, n_heads=12, d_ff=3072),
    },
    "gnn": {
        "tiny": GNNConfig("tiny", hidden=64, n_layers=4),
        "small": GNNConfig("small", hidden=128, n_layers=6),
        "medium": GNNConfig("medium", hidden=256, n_layers=8),
        "large": GNNConfig("large", hidden=512, n_layers=10),
    },
    "hgnn": {
        "tiny": HGNNConfig("tiny", hidden=64, n_layers=4, predict_eta=tight_binding.ETA),
        "small": HGNNConfig("small", hidden=128, n_layers=6, predict_eta=tight_binding.ETA),
        "medium": HGNNConfig("medium", hidden=256, n_layers=8, predict_eta=tight_binding.ETA),
        "large": HGNNConfig("large", hidden=512, n_layers=10, predict_eta=tight_binding.ETA),
    },
}
MODEL_FAMILIES = tuple(CONFIGS)
CONFIG_NAMES = ("tiny", "small", "medium", "large")



def get_config(model, name, **overrides):
    """The table row `CONFIGS[model][name]`, with data-dependent fields replaced."""
    config = CONFIGS[model][name]
    return type(config)(**{**asdict(config), **overrides})


def config_from_dict(config_dict):
    """Rebuild a config dataclass from a checkpoint's `config` dict.

    Raises:
        ValueError: the dict names no known model family or does not fit its fields.
    """
    cls, _ = _FAMILY_CLASSES.get(config_dict.get("model"), (None, None))
    if cls is None:
        raise ValueError(f"unknown model family {config_dict.get('model')!r}")
    names = {f.name for f in fields(cls)}
    unknown = set(config_dict) - names
    # A field with a default may be absent: checkpoints written before it existed meant it.
    required = {f.name for f in fields(cls)
                if f.default is MISSING_FIELD and f.default_factory is MISSING_FIELD}
    missing = required - set(config_dict)
    if unknown or missing:
        raise ValueError(f"config fields do not match {cls.__name__}: "
                         f"unknown {sorted(unknown)}, missing {sorted(missing)}")
    return cls(**config_dict)


def build_model(config):
    """A freshly initialised module for a config dataclass or its dict."""
    if isinstance(config, dict):
        config = config_from_dict(config)
    return _FAMILY_CLASSES[config.model][1](config)


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# Antibody transformer: a GPT-style decoder over amino-acid tokens
# --------------------------------------------------------------------------------------------

def token_loss(logits, target, config, training):
    """(mean cross-entropy over real tokens, number of real tokens). Label smoothing applies
    in training only: validation loss, perplexity and early stopping see the plain
    likelihood."""
    smoothing = config.label_smoothing if training else 0.0
    loss_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                               ignore_index=PAD_ID, reduction="sum",
                               label_smoothing=smoothing)
    count = (target != PAD_ID).sum()
    return loss_sum / count, count


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.proj.residual_projection = True
        self.dropout = config.dropout

    def forward(self, x, cache=None):
        """Attend causally; with `cache` (a dict), keys and values of earlier positions are
        reused and extended, so sampling costs one position per step."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        # With a cache and one new query, that query may see every cached key: no mask needed.
        causal = cache is None or T > 1
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=causal, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return F.dropout(self.proj(y), self.dropout, self.training)


class TransformerBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.d_model)
        self.fc = nn.Linear(config.d_model, config.d_ff)
        self.out = nn.Linear(config.d_ff, config.d_model)
        self.out.residual_projection = True
        self.dropout = config.dropout

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln1(x), cache)
        h = self.out(F.gelu(self.fc(self.ln2(x))))
        return x + F.dropout(h, self.dropout, self.training)


class AntibodyTransformer(nn.Module):
    """Autoregressive language model over `<bos> residues <eos>` token sequences."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embedding = nn.Embedding(config.max_len, config.d_model)
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.apply(self._init_weights)

    def _init_weights(self, module):
        # GPT-2 init: N(0, 0.02), with residual projections scaled down by depth so the
        # residual stream's variance does not grow with the number of blocks.
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "residual_projection", False):
                std /= math.sqrt(2 * self.config.n_layers)
            nn.init.normal_(module.weight, 0.0, std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, 0.02)

    def forward(self, tokens, caches=None, offset=0):
        """Logits for the next token at every position of `tokens` (B, T)."""
        positions = torch.arange(offset, offset + tokens.shape[1], device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        x = F.dropout(x, self.config.dropout, self.training)
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i])
        # The output projection is tied to the token embedding: 25 tokens, one shared table.
        return self.ln_f(x) @ self.token_embedding.weight.t()

    def loss(self, batch):
        """(mean loss over real tokens, number of real tokens) for a batch from data.py."""
        return token_loss(self(batch["input"]), batch["target"], self.config, self.training)

    def start_decoding(self, n, condition=None):
        """The decoding state of `n` sequences (decoding.py): a key/value cache per block."""
        return [dict() for _ in self.blocks]

    def next_logits(self, caches, tokens, position):
        return self(tokens, caches, offset=position)[:, -1]

    @torch.no_grad()
    def generate(self, num_sequences, generator, temperature=1.0, max_len=None, top_p=1.0,
                 decoding=None):
        """Sample token sequences (without <bos>), stopping each at <eos> or `max_len` tokens;
        `decoding` (a decoding.Decoding) replaces temperature and top_p when given. Greedy
        decoding gives one sequence; beam search the `num_sequences` most likely."""
        decoding = decoding or Decoding(temperature=temperature, top_p=top_p)
        was_training = self.training
        self.eval()
        device = self.token_embedding.weight.device
        max_len = max_len or self.config.max_len
        if decoding.method == "beam":
            tokens = beam_search(self, self.start_decoding(1), num_sequences, max_len,
                                 decoding.beam_size, device)
        else:
            n = 1 if decoding.method == "greedy" else num_sequences
            tokens = sample(self, self.start_decoding(n), n, max_len, generator, decoding,
                            device)
        self.train(was_training)
        return tokens


# --------------------------------------------------------------------------------------------
# Conditioned antibody transformer: antigen encoder + pKd embedding -> heavy|light decoder
# --------------------------------------------------------------------------------------------

def _init_gpt2(module, n_layers):
    """GPT-2 init: N(0, 0.02), residual projections scaled down by depth."""
    if isinstance(module, nn.Linear):
        std = 0.02
        if getattr(module, "residual_projection", False):
            std /= math.sqrt(2 * n_layers)
        nn.init.normal_(module.weight, 0.0, std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, 0.0, 0.02)


def _heads(t, n_heads):
    B, T, C = t.shape
    return t.view(B, T, n_heads, C // n_heads).transpose(1, 2)


class EncoderSelfAttention(nn.Module):
    """Self-attention over a padded antigen: every residue sees every real residue."""

    def __init__(self, config):
        super().__init__()
        self.n_heads, self.dropout = config.n_heads, config.dropout
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.proj.residual_projection = True

    def forward(self, x, key_valid):
        B, T, C = x.shape
        q, k, v = (_heads(t, self.n_heads) for t in self.qkv(x).split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_valid[:, None, None, :],
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return F.dropout(self.proj(y), self.dropout, self.training)


class CrossAttention(nn.Module):
    """The decoder's attention to the condition (pKd slot, antigen residues). With `cache`,
    the memory's keys and values are computed once and reused at every sampling step."""

    def __init__(self, config):
        super().__init__()
        self.n_heads, self.dropout = config.n_heads, config.dropout
        self.q = nn.Linear(config.d_model, config.d_model)
        self.kv = nn.Linear(config.d_model, 2 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.proj.residual_projection = True

    def forward(self, x, memory, memory_valid, cache=None):
        B, T, C = x.shape
        if cache is not None and "k" in cache:
            k, v = cache["k"], cache["v"]
        else:
            k, v = (_heads(t, self.n_heads) for t in self.kv(memory).split(C, dim=2))
            if cache is not None:
                cache["k"], cache["v"] = k, v
        q = _heads(self.q(x), self.n_heads)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=memory_valid[:, None, None, :],
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return F.dropout(self.proj(y), self.dropout, self.training)


class FeedForward(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.d_ff)
        self.out = nn.Linear(config.d_ff, config.d_model)
        self.out.residual_projection = True
        self.dropout = config.dropout

    def forward(self, x):
        return F.dropout(self.out(F.gelu(self.fc(x))), self.dropout, self.training)


class EncoderBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(config.d_model), nn.LayerNorm(config.d_model)
        self.attn = EncoderSelfAttention(config)
        self.ff = FeedForward(config)

    def forward(self, x, key_valid):
        x = x + self.attn(self.ln1(x), key_valid)
        return x + self.ff(self.ln2(x))


class DecoderBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.ln_cross = nn.LayerNorm(config.d_model)
        self.cross = CrossAttention(config)
        self.ln2 = nn.LayerNorm(config.d_model)
        self.ff = FeedForward(config)

    def forward(self, x, memory, memory_valid, cache=None):
        x = x + self.attn(self.ln1(x), None if cache is None else cache["self"])
        x = x + self.cross(self.ln_cross(x), memory, memory_valid,
                           None if cache is None else cache["cross"])
        return x + self.ff(self.ln2(x))


class ConditionedAntibodyTransformer(nn.Module):
    """Writes `<bos> heavy <sep> light <eos>` conditioned on an antigen and a target pKd.

    The condition is a memory the decoder cross-attends to: one slot for the pKd (a learned
    embedding of the number, or a learned "no pKd" vector), one slot for "no antigen" (a
    learned vector, visible only when the record has none), then the antigen's residues as
    the encoder reads them (masked out when the record has none). Every parameter takes part
    in every batch, with or without conditions, as DistributedDataParallel requires.

    A batch (antibody.ConditionedData.batch): `input`/`target` decoder tokens, `antigen`
    (B, S) residue tokens padded with <pad>, `has_antigen` (B,) bool, `pkd` (B,) float,
    `has_pkd` (B,) bool.
    """

    PKD_CENTRE, PKD_SCALE = 7.0, 2.0   # pKd of typical binders is 5-11

    def __init__(self, config):
        super().__init__()
        self.config = config
        d = config.d_model
        self.antigen_embedding = nn.Embedding(config.vocab_size, d)
        self.antigen_position = nn.Embedding(config.max_antigen_len, d)
        self.encoder = nn.ModuleList(EncoderBlock(config) for _ in range(config.n_layers))
        self.encoder_norm = nn.LayerNorm(d)
        self.pkd_embedding = nn.Sequential(nn.Linear(1, d), nn.GELU(), nn.Linear(d, d))
        self.no_pkd = nn.Parameter(torch.zeros(d))
        self.no_antigen = nn.Parameter(torch.zeros(d))
        self.token_embedding = nn.Embedding(config.vocab_size, d)
        self.position_embedding = nn.Embedding(config.max_len, d)
        self.decoder = nn.ModuleList(DecoderBlock(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(d)
        # The condition's summary enters the decoder through this projection, initialised so
        # that its output's components are about as large as the token embeddings' (0.02):
        # its input is layer-normed (components ~1) and would drown them. Not zero: a model
        # whose projection started at zero had, after 7 epochs on the built-in data, grown
        # it only to entries of ~0.004, and did not read the antigen (the gradient that
        # would grow it comes from the few tokens the antigen decides, against the noise of
        # all the others); started at this size, the class is in the decoder's input from the
        # first step, for its layers to learn to use.
        self.summary_projection = nn.Linear(d, d)
        self.composition_norm = nn.LayerNorm(d)
        self.apply(lambda m: _init_gpt2(m, 2 * config.n_layers))
        nn.init.normal_(self.summary_projection.weight, 0.0, 0.02 / math.sqrt(d))
        nn.init.normal_(self.no_pkd, 0.0, 0.02)
        nn.init.normal_(self.no_antigen, 0.0, 0.02)

    def encode(self, antigen, has_antigen, pkd, has_pkd):
        """The condition the decoder reads, a dict: `memory` (B, 2 + S, d) and its `valid`
        mask (B, 2 + S) for cross-attention, and `summary` (B, d), added to every decoder
        input: the pKd slot plus the antigen's composition, its mean residue embedding,
        normalised (or the "no antigen" vector).

        Why the summary: through attention alone the decoder meets the pKd as 1 of 2 + S
        keys at initialisation; trained on the built-in data, such a model still ignored the
        pKd after 6 epochs. Why the composition rather than the mean encoded residue: that
        mean is dominated by the mean of the position embeddings, which depends on the
        antigen's length; after 3 epochs it told the built-in classes apart 33% of the time
        (nearest centroid; chance 12.5%), and the model had not begun to read the antigen."""
        B, S = antigen.shape
        # A row without an antigen still gets one "valid" key in the encoder (its first
        # pad), so that no attention row is empty (that would give NaN); the memory then
        # masks all of that row's residues out.
        residue_valid = (antigen != PAD_ID) & has_antigen[:, None]
        encoder_valid = residue_valid.clone()
        encoder_valid[:, 0] = True
        positions = torch.arange(S, device=antigen.device)
        x = self.antigen_embedding(antigen) + self.antigen_position(positions)
        x = F.dropout(x, self.config.dropout, self.training)
        for block in self.encoder:
            x = block(x, encoder_valid)
        residues = self.encoder_norm(x)
        scaled = ((pkd.float() - self.PKD_CENTRE) / self.PKD_SCALE)[:, None].to(residues.dtype)
        pkd_slot = torch.where(has_pkd[:, None], self.pkd_embedding(scaled),
                               self.no_pkd.to(residues.dtype).expand(B, -1))
        no_antigen = self.no_antigen.to(residues.dtype).expand(B, -1)
        weights = residue_valid.to(residues.dtype)[:, :, None]
        composition = ((self.antigen_embedding(antigen) * weights).sum(1)
                       / weights.sum(1).clamp_min(1.0))
        antigen_summary = torch.where(has_antigen[:, None],
                                      self.composition_norm(composition).to(residues.dtype),
                                      no_antigen)
        memory = torch.cat([pkd_slot[:, None], no_antigen[:, None], residues], dim=1)
        valid = torch.cat([torch.ones_like(has_pkd)[:, None], ~has_antigen[:, None],
                           residue_valid], dim=1)
        return {"memory": memory, "valid": valid,
                "summary": self.summary_projection(pkd_slot + antigen_summary)}

    def forward(self, tokens, condition, caches=None, offset=0):
        """Logits for the next token at every position of `tokens` (B, T), given the
        `condition` of `encode`."""
        positions = torch.arange(offset, offset + tokens.shape[1], device=tokens.device)
        x = (self.token_embedding(tokens) + self.position_embedding(positions)
             + condition["summary"][:, None])
        x = F.dropout(x, self.config.dropout, self.training)
        for i, block in enumerate(self.decoder):
            x = block(x, condition["memory"], condition["valid"],
                      None if caches is None else caches[i])
        # Tied: the output projection is the decoder's token embedding.
        return self.ln_f(x) @ self.token_embedding.weight.t()

    def conditions(self, batch):
        """The batch's (has_antigen, has_pkd), each dropped to "none" with probability
        `condition_dropout` in training (drawn from the training RNG, which is
        checkpointed, so a resumed run drops the same ones)."""
        has_antigen, has_pkd = batch["has_antigen"], batch["has_pkd"]
        p = self.config.condition_dropout
        if self.training and p > 0:
            keep = torch.rand(has_antigen.shape[0], 2, device=has_antigen.device) >= p
            has_antigen, has_pkd = has_antigen & keep[:, 0], has_pkd & keep[:, 1]
        return has_antigen, has_pkd

    def loss(self, batch):
        """(mean loss over real tokens, number of real tokens)."""
        has_antigen, has_pkd = self.conditions(batch)
        condition = self.encode(batch["antigen"], has_antigen, batch["pkd"], has_pkd)
        return token_loss(self(batch["input"], condition), batch["target"], self.config,
                          self.training)

    def start_decoding(self, n, condition):
        """The decoding state of `n` sequences for a `condition` (a batch's condition
        tensors with 1 row, shared by all, or n rows)."""
        encoded = self.encode(condition["antigen"], condition["has_antigen"],
                              condition["pkd"], condition["has_pkd"])
        if encoded["memory"].shape[0] != n:
            encoded = {k: v.expand(n, *v.shape[1:]) for k, v in encoded.items()}
        return {"condition": encoded,
                "caches": [{"self": {}, "cross": {}} for _ in self.decoder]}

    def next_logits(self, state, tokens, position):
        return self(tokens, state["condition"], state["caches"], offset=position)[:, -1]

    @torch.no_grad()
    def generate(self, num_sequences, generator, condition, decoding=None, max_len=None):
        """Token sequences (without <bos>) for `condition` (see start_decoding), by
        `decoding` (decoding.Decoding; sampling at temperature 1 by default). Greedy gives
        one sequence per condition row; beam search needs a one-row condition."""
        decoding = decoding or Decoding()
        was_training = self.training
        self.eval()
        device = self.token_embedding.weight.device
        condition = {k: v.to(device) for k, v in condition.items()}
        max_len = max_len or self.config.max_len
        rows = condition["antigen"].shape[0]
        if decoding.method == "beam":
            tokens = beam_search(self, self.start_decoding(1, condition), num_sequences,
                                 max_len, decoding.beam_size, device)
        else:
            n = rows if decoding.method == "greedy" else num_sequences
            tokens = sample(self, self.start_decoding(n, condition), n, max_len, generator,
                            decoding, device)
        self.train(was_training)
        return tokens


# --------------------------------------------------------------------------------------------
# DNA transport GNN: typed message passing on one disjoint graph per batch
# --------------------------------------------------------------------------------------------

def edge_weights(batch):
    """(e, 1) float32 weight of each edge's message: a contact edge's coupling relative to the
    default 0.1 eV (a contact twice as strong speaks twice as loud), 1 for every other edge.
    The default contacts give exactly 1.0, so their messages are unchanged bit for bit."""
    relative = batch["contact_gamma"] / tight_binding.GAMMA
    weight = torch.where(batch["edge_type"] == EDGE_CONTACT, relative, torch.ones_like(relative))
    return weight.float().unsqueeze(1)


def loss_in_decades(config, prediction, target):
    """The configured loss between log10 spectra: mean squared error, or Huber with its
    threshold `huber_delta` in decades (G3NAT's loss; quadratic within delta, linear beyond,
    so a few resonances missed by decades do not dominate the gradient)."""
    if config.loss == "huber":
        return F.huber_loss(prediction, target, delta=config.huber_delta)
    return F.mse_loss(prediction, target)


class MessagePassingLayer(nn.Module):
    """h_i += MLP([h_i, mean_j w_ij W_type(i,j) h_j]): one weight matrix per edge type, so the
    backbone's 5'->3' direction, hydrogen bonds and electrode contacts carry different
    messages, each scaled by its edge weight (`edge_weights`). Aggregation is `index_add_` over
    the whole batch, never a loop over graphs."""

    def __init__(self, hidden, num_edge_types, dropout):
        super().__init__()
        self.num_edge_types = num_edge_types
        self.message = nn.Linear(hidden, hidden * num_edge_types, bias=False)
        self.norm = nn.LayerNorm(hidden)
        self.update = nn.Sequential(nn.Linear(2 * hidden, 2 * hidden), nn.GELU(),
                                    nn.Linear(2 * hidden, hidden))
        self.dropout = dropout

    def forward(self, h, edge_index, edge_type, inv_degree, edge_weight):
        src, dst = edge_index
        hn = self.norm(h)
        per_type = self.message(hn).view(h.shape[0], self.num_edge_types, -1)
        messages = per_type[src, edge_type] * edge_weight.to(per_type.dtype)
        aggregated = torch.zeros_like(h).index_add_(0, dst, messages) * inv_degree
        update = self.update(torch.cat([hn, aggregated], dim=1))
        return h + F.dropout(update, self.dropout, self.training)


class DuplexMessagePassing(nn.Module):
    """What both DNA models share: node embedding and `n_layers` rounds of typed message
    passing over a batch of duplex graphs (`node_states`). A subclass adds its heads after
    calling this __init__ (so that a fresh model draws its weights in the same order)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed = nn.Linear(config.node_features, config.hidden)
        self.layers = nn.ModuleList(
            MessagePassingLayer(config.hidden, config.num_edge_types, config.dropout)
            for _ in range(config.n_layers))

    def node_states(self, batch):
        """(num_nodes, hidden) after the last layer."""
        h = self.embed(batch["x"])
        weight = edge_weights(batch)
        for layer in self.layers:
            h = layer(h, batch["edge_index"], batch["edge_type"], batch["inv_degree"], weight)
        return h


class TransportGNN(DuplexMessagePassing):
    """Predicts log10 T(E) and log10 DOS(E) on the energy grid for a batch of duplex graphs.

    Targets are learned standardised per energy; the mean and scale of the training targets
    live in buffers, so the checkpoint alone turns outputs back into log10 values.
    """

    def __init__(self, config):
        super().__init__(config)
        hidden = config.hidden
        self.norm = nn.LayerNorm(3 * hidden)
        self.head = nn.Sequential(nn.Linear(3 * hidden, 2 * hidden), nn.GELU(),
                                  nn.Linear(2 * hidden, 2 * config.n_energies))
        self.register_buffer("target_mean", torch.zeros(2, config.n_energies))
        self.register_buffer("target_std", torch.ones(2, config.n_energies))

    def set_target_scale(self, targets):
        """Standardise against the training targets (N, 2, n_energies)."""
        self.target_mean.copy_(targets.mean(dim=0))
        self.target_std.copy_(targets.std(dim=0).clamp_min(1e-3))

    def forward(self, batch):
        """Standardised predictions (num_graphs, 2, n_energies)."""
        h = self.node_states(batch)
        num_graphs = batch["left"].shape[0]
        bases = torch.zeros(num_graphs, h.shape[1], dtype=h.dtype, device=h.device)
        bases.index_add_(0, batch["graph"], h)
        pooled = torch.cat([bases * batch["inv_nodes"], h[batch["left"]], h[batch["right"]]], 1)
        return self.head(self.norm(pooled)).view(num_graphs, 2, -1)

    def predict(self, batch):
        """log10 T(E) and log10 DOS(E), shape (num_graphs, 2, n_energies)."""
        return self(batch) * self.target_std + self.target_mean

    def loss(self, batch):
        """(loss, number of graphs): the mean squared error of standardised targets, or with
        `loss = "huber"` the Huber loss of the log10 values themselves (delta in decades)."""
        prediction = self(batch)
        count = torch.tensor(prediction.shape[0], device=prediction.device)
        if self.config.loss == "huber":
            return loss_in_decades(self.config, prediction * self.target_std + self.target_mean,
                                   batch["target"]), count
        target = (batch["target"] - self.target_mean) / self.target_std
        return F.mse_loss(prediction, target), count


# --------------------------------------------------------------------------------------------
# DNA Hamiltonian GNN: message passing -> tight-binding H -> NEGF -> T(E), DOS(E)
# --------------------------------------------------------------------------------------------

# The couplings the model predicts, in the order of its coupling head's outputs; the names are
# tight_binding.duplex_sites' kinds.
COUPLING_KINDS = ("backbone", "hbond")


class HamiltonianGNN(DuplexMessagePassing):
    """Predicts each duplex's tight-binding Hamiltonian (an on-site energy per base, a
    coupling per backbone and hydrogen-bond pair) and gets log10 T(E) and log10 DOS(E) from it
    through a differentiable NEGF layer, so every prediction comes from a physical H.

    H is real symmetric (Hermitian) by construction: one coupling per undirected edge, written
    to both H_ij and H_ji, from a function of the two endpoints that does not depend on their
    order, concat(h_i + h_j, h_i * h_j). A backbone pair's coupling still depends on which
    base is 5' (the tables do: AT 0.105 eV, TA 0.086 eV) because the embeddings do: messages
    along 5'->3' and 3'->5' edges have different weights. Entries with no edge stay 0.

    The message passing is float32 (or the autocast type); H, the NEGF and the loss are
    float64/complex128, where near-singular (E - H) at resonances and T down to 1e-40 are safe.
    """

    def __init__(self, config):
        super().__init__(config)
        hidden = config.hidden
        self.norm = nn.LayerNorm(hidden)
        self.onsite_head = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(),
                                         nn.Linear(hidden, 1))
        self.coupling_head = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.GELU(),
                                           nn.Linear(hidden, len(COUPLING_KINDS)))
        # Start from a plausible duplex rather than a random one: every base at the middle of
        # the grid and couplings of the tables' typical size, varying a little by base. With
        # couplings near 0 the chain would be cut, T ~ 0 and log10 T without a useful gradient.
        with torch.no_grad():
            for head in (self.onsite_head, self.coupling_head):
                head[-1].weight.mul_(0.1)
            self.onsite_head[-1].bias.zero_()
            self.coupling_head[-1].bias.copy_(torch.tensor(
                [np.mean(list(tight_binding.INTRA_STRAND.values())),
                 np.mean(list(tight_binding.HYDROGEN_BOND.values()))]))
        # The data's energy grid (prepare_fresh_model sets a file's own); a checkpoint carries it.
        self.register_buffer("energy_grid", torch.from_numpy(
            np.linspace(config.energy_min, config.energy_max, config.n_energies)))

    def set_energy_grid(self, energies):
        self.energy_grid.copy_(torch.as_tensor(energies, dtype=torch.float64))

    def _assemble(self, batch):
        """The batch's Hamiltonians, padded: a dict with H (B, N, N) float64, site_mask (B, N),
        gamma_left and gamma_right (B, N), and each coupling with its (graph, site i, site j,
        kind) (for `hamiltonian`)."""
        h = self.norm(self.node_states(batch))
        graph, left = batch["graph"], batch["left"]
        num_graphs = left.shape[0]
        # A graph's nodes are contiguous: left electrode, right electrode, then its sites in
        # duplex_sites order, so a node's site index is its offset from the left one, minus 2.
        site = torch.arange(h.shape[0], device=h.device) - left[graph] - 2
        is_site = site >= 0
        sites_per_graph = torch.bincount(graph, minlength=num_graphs) - 2
        size = int(sites_per_graph.max()) if num_graphs else 0
        site_mask = torch.arange(size, device=h.device) < sites_per_graph[:, None]

        src, dst = batch["edge_index"]
        edge_type = batch["edge_type"]
        # Each undirected pair once: a backbone pair by its 5'->3' edge, a hydrogen bond by its
        # edge from the lower node id.
        hbond = (edge_type == EDGE_HBOND) & (src < dst)
        pair = (edge_type == EDGE_BACKBONE_5TO3) | hbond
        i, j, kind = src[pair], dst[pair], hbond[pair].long()
        features = torch.cat([h[i] + h[j], h[i] * h[j]], dim=1)
        coupling = self.coupling_head(features).gather(1, kind[:, None]).squeeze(1).double()
        middle = 0.5 * (self.config.energy_min + self.config.energy_max)
        onsite = self.onsite_head(h[is_site]).squeeze(1).double() + middle

        # Out-of-place index_put keeps the autograd graph to the heads' outputs.
        H = torch.zeros(num_graphs, size, size, dtype=torch.float64, device=h.device)
        site_graph, site_index = graph[is_site], site[is_site]
        H = H.index_put((site_graph, site_index, site_index), onsite)
        pair_graph = graph[i]
        H = H.index_put((pair_graph, site[i], site[j]), coupling)
        H = H.index_put((pair_graph, site[j], site[i]), coupling)

        # Contacts: an electrode -> site EDGE_CONTACT edge gives that site its wide-band
        # gamma, the edge's `contact_gamma` (the data's, in eV).
        contact = (edge_type == EDGE_CONTACT) & ~is_site[src]
        gamma = batch["contact_gamma"][contact].double()
        to_site, side = dst[contact], src[contact] - left[graph[src[contact]]]  # 0 L, 1 R
        gammas = []
        for electrode in (0, 1):
            on = side == electrode
            gammas.append(torch.zeros(num_graphs, size, dtype=torch.float64, device=h.device)
                          .index_put((graph[to_site[on]], site[to_site[on]]), gamma[on],
                                     accumulate=True))
        return {"H": H, "site_mask": site_mask, "gamma_left": gammas[0],
                "gamma_right": gammas[1], "coupling": coupling,
                "coupling_at": (pair_graph, site[i], site[j], kind)}

    @property
    def eta(self):
        """The NEGF broadening now: `eta` in training, `predict_eta` in eval mode."""
        if self.training or self.config.predict_eta is None:
            return self.config.eta
        return self.config.predict_eta

    def _negf(self, parts):
        """(T, DOS, LDOS) of the assembled Hamiltonians on the energy grid, in complex128 and
        outside any autocast (whose low precision would wreck the inversion)."""
        with torch.autocast(parts["H"].device.type, enabled=False):
            return tight_binding.padded_negf(parts["H"], parts["site_mask"],
                                             parts["gamma_left"], parts["gamma_right"],
                                             self.energy_grid, self.eta)

    def forward(self, batch):
        """log10 T(E) and log10 DOS(E), float64 (num_graphs, 2, n_energies)."""
        T, DOS, _ = self._negf(self._assemble(batch))
        # The floor only guards log10(0) (T underflowing for a chain the model cut); the
        # built-in data's smallest T is ~1e-37.
        return torch.log10(torch.stack([T, DOS], dim=1).clamp_min(1e-300))

    def predict(self, batch):
        """log10 T(E) and log10 DOS(E), shape (num_graphs, 2, n_energies), float64."""
        return self(batch)

    def loss(self, batch):
        """(mean squared error of log10 T and log10 DOS in decades, or their Huber loss with
        `loss = "huber"`; number of graphs).

        Plain decades, without TransportGNN's standardisation: the outputs are physical, so
        there is nothing to unscale, and weighting the errors by the targets' spread did
        worse. Measured (tiny, 900 built-in duplexes, eta 1e-6, 4 epochs, val R² of T / DOS):
        decades 0.78 / 0.41; per-energy standardised 0.39 / 0.51; each spectrum by its
        overall spread (T's is 7 decades, DOS's 1) 0.66 / 0.37. T's errors dominate the sum,
        and fitting T fits the H that the DOS comes from."""
        prediction = self(batch)
        target = batch["target"]
        count = torch.tensor(target.shape[0], device=target.device)
        loss = loss_in_decades(self.config, prediction, target.to(prediction.dtype))
        return loss.float(), count

    @torch.no_grad()
    def hamiltonian(self, batch):
        """Each graph's predicted Hamiltonian and local DOS, as float64 CPU tensors: a list of
        dicts with `onsite` (n,) eV for sites 0..n-1 in duplex_sites order, `pairs` (m, 2) site
        indices i < j, `kind` (m,) the index in COUPLING_KINDS, `coupling` (m,) eV,
        `gamma_left` and `gamma_right` (n,) eV, and `ldos` (n_energies, n) 1/eV."""
        parts = self._assemble(batch)
        _, _, LDOS = self._negf(parts)
        result = []
        pair_graph, site_i, site_j, kind = parts["coupling_at"]
        for g, n in enumerate(parts["site_mask"].sum(1).tolist()):
            mine = pair_graph == g
            H = parts["H"][g, :n, :n]
            pairs = torch.stack([site_i[mine], site_j[mine]], 1)
            result.append({
                "onsite": H.diagonal().cpu(),
                "pairs": pairs.sort(dim=1).values.cpu(),
                "kind": kind[mine].cpu(),
                "coupling": parts["coupling"][mine].cpu(),
                "gamma_left": parts["gamma_left"][g, :n].cpu(),
                "gamma_right": parts["gamma_right"][g, :n].cpu(),
                "ldos": LDOS[g, :, :n].cpu()})
        return result


# Each family's (config class, module class), by the `model` name its configs carry.
_FAMILY_CLASSES = {"transformer": (TransformerConfig, AntibodyTransformer),
                   "seq2seq": (Seq2SeqConfig, ConditionedAntibodyTransformer),
                   "gnn": (GNNConfig, TransportGNN),
                   "hgnn": (HGNNConfig, HamiltonianGNN)}
