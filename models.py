"""Model configs and modules: the antibody transformer and the DNA transport GNN.

Each family has a table of named sizes (`CONFIGS`). A config is a frozen dataclass; the
checkpoint stores `asdict(config)` and `build_model(config_dict)` rebuilds the same module from
it, so a checkpoint is self-describing. A new family adds its config class, its rows and its
module here (`_FAMILY_CLASSES`); what training does with it is its module in families/.
"""

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from antibody import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE
from dna import NODE_FEATURES, NUM_EDGE_TYPES


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


CONFIGS = {
    "transformer": {
        "tiny": TransformerConfig("tiny", d_model=128, n_layers=4, n_heads=4, d_ff=640),
        "small": TransformerConfig("small", d_model=256, n_layers=7, n_heads=8, d_ff=1024),
        "medium": TransformerConfig("medium", d_model=512, n_layers=14, n_heads=8, d_ff=2048),
        "large": TransformerConfig("large", d_model=768, n_layers=16, n_heads=12, d_ff=3072),
    },
    "gnn": {
        "tiny": GNNConfig("tiny", hidden=64, n_layers=4),
        "small": GNNConfig("small", hidden=128, n_layers=6),
        "medium": GNNConfig("medium", hidden=256, n_layers=8),
        "large": GNNConfig("large", hidden=512, n_layers=10),
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
    missing = {f.name for f in fields(cls)} - set(config_dict)
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
        logits = self(batch["input"])
        target = batch["target"]
        loss_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                   ignore_index=PAD_ID, reduction="sum")
        count = (target != PAD_ID).sum()
        return loss_sum / count, count

    @torch.no_grad()
    def generate(self, num_sequences, generator, temperature=1.0, max_len=None, top_p=1.0):
        """Sample token sequences (without <bos>), stopping each at <eos> or `max_len` tokens.
        `top_p` < 1 samples from the smallest set of tokens whose probabilities add up to at
        least top_p (nucleus sampling).

        Sampling draws only from `generator`, never the global RNG, so evaluating a model does
        not change the random stream that training continues with.
        """
        was_training = self.training
        self.eval()
        device = self.token_embedding.weight.device
        max_len = max_len or self.config.max_len
        tokens = torch.full((num_sequences, 1), BOS_ID, dtype=torch.long, device=device)
        caches = [dict() for _ in self.blocks]
        finished = torch.zeros(num_sequences, dtype=torch.bool, device=device)
        out = []
        for position in range(max_len - 1):
            logits = self(tokens[:, -1:] if position else tokens, caches, offset=position)[:, -1]
            logits[:, PAD_ID] = float("-inf")  # <pad> and <bos> are never valid continuations
            logits[:, BOS_ID] = float("-inf")
            probs = F.softmax(logits.float() / temperature, dim=-1)
            if top_p < 1.0:
                probs = _nucleus(probs, top_p)
            nxt = torch.multinomial(probs.cpu(), 1, generator=generator).to(device)
            nxt[finished] = PAD_ID
            out.append(nxt)
            finished |= nxt.squeeze(1) == EOS_ID
            tokens = nxt
            if finished.all():
                break
        self.train(was_training)
        return torch.cat(out, dim=1).cpu()


def _nucleus(probs, top_p):
    """`probs` with every token outside the top-p nucleus set to 0 (the most likely token is
    always kept); multinomial renormalises."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(dim=-1) - sorted_probs   # mass of the more likely tokens
    sorted_probs[before >= top_p] = 0.0
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs)


# --------------------------------------------------------------------------------------------
# DNA transport GNN: typed message passing on one disjoint graph per batch
# --------------------------------------------------------------------------------------------

class MessagePassingLayer(nn.Module):
    """h_i += MLP([h_i, mean_j W_type(i,j) h_j]): one weight matrix per edge type, so the
    backbone's 5'->3' direction, hydrogen bonds and electrode contacts carry different
    messages. Aggregation is `index_add_` over the whole batch, never a loop over graphs."""

    def __init__(self, hidden, num_edge_types, dropout):
        super().__init__()
        self.num_edge_types = num_edge_types
        self.message = nn.Linear(hidden, hidden * num_edge_types, bias=False)
        self.norm = nn.LayerNorm(hidden)
        self.update = nn.Sequential(nn.Linear(2 * hidden, 2 * hidden), nn.GELU(),
                                    nn.Linear(2 * hidden, hidden))
        self.dropout = dropout

    def forward(self, h, edge_index, edge_type, inv_degree):
        src, dst = edge_index
        hn = self.norm(h)
        per_type = self.message(hn).view(h.shape[0], self.num_edge_types, -1)
        messages = per_type[src, edge_type]
        aggregated = torch.zeros_like(h).index_add_(0, dst, messages) * inv_degree
        update = self.update(torch.cat([hn, aggregated], dim=1))
        return h + F.dropout(update, self.dropout, self.training)


class TransportGNN(nn.Module):
    """Predicts log10 T(E) and log10 DOS(E) on the energy grid for a batch of duplex graphs.

    Targets are learned standardised per energy; the mean and scale of the training targets
    live in buffers, so the checkpoint alone turns outputs back into log10 values.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        hidden = config.hidden
        self.embed = nn.Linear(config.node_features, hidden)
        self.layers = nn.ModuleList(
            MessagePassingLayer(hidden, config.num_edge_types, config.dropout)
            for _ in range(config.n_layers))
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
        h = self.embed(batch["x"])
        for layer in self.layers:
            h = layer(h, batch["edge_index"], batch["edge_type"], batch["inv_degree"])
        num_graphs = batch["left"].shape[0]
        bases = torch.zeros(num_graphs, h.shape[1], dtype=h.dtype, device=h.device)
        bases.index_add_(0, batch["graph"], h)
        pooled = torch.cat([bases * batch["inv_nodes"], h[batch["left"]], h[batch["right"]]], 1)
        return self.head(self.norm(pooled)).view(num_graphs, 2, -1)

    def predict(self, batch):
        """log10 T(E) and log10 DOS(E), shape (num_graphs, 2, n_energies)."""
        return self(batch) * self.target_std + self.target_mean

    def loss(self, batch):
        """(mean squared error of standardised targets, number of graphs)."""
        target = (batch["target"] - self.target_mean) / self.target_std
        prediction = self(batch)
        count = torch.tensor(target.shape[0], device=target.device)
        return F.mse_loss(prediction, target), count


# Each family's (config class, module class), by the `model` name its configs carry.
_FAMILY_CLASSES = {"transformer": (TransformerConfig, AntibodyTransformer),
                   "gnn": (GNNConfig, TransportGNN)}
