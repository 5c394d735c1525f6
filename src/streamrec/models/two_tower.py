"""The two-tower retrieval model: a member's recent history -> a vector, a title -> a vector.

The score is the inner product of the two vectors (after L2 normalisation when
``normalize`` is set), exactly the score a FAISS inner-product index uses at serving time.
The temperature only scales the training logits; it never changes a ranking.

Shapes: B members per batch, L history positions, d = ``dim``. Item indices are the
dataset's contiguous indices; in histories they are shifted by one so 0 is padding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

POOLINGS = ("mean", "attention", "transformer")
RECENCY_BUCKETS = 16  # log2-spaced buckets of days between a history view and "now"
SECONDS_PER_DAY = 86400.0  # history_age_days = (request time - view time) / SECONDS_PER_DAY


def hour_code(unix_seconds):
    """The ``hour`` input: 1 + hour of day (UTC) of unix times (array or scalar); 0 = unknown."""
    return (unix_seconds // 3600) % 24 + 1


@dataclass
class TwoTowerConfig:
    """Constructor arguments of :class:`TwoTower`; saved in checkpoints and artifacts."""

    n_items: int
    n_genres: int = 0
    text_buckets: int = 16384  # hashed title/description vocabulary (0 = no text)
    max_tokens: int = 24
    dim: int = 64  # output dimension of both towers (the index dimension)
    hidden: int = 256  # width of the towers' MLPs
    pooling: str = "mean"  # history encoder: mean | attention | transformer
    max_history: int = 50  # history positions the query tower reads
    use_item_ids: bool = True  # learned id embedding in the item tower (content is always used)
    id_dropout: float = 0.1  # train-time probability of hiding a title's id, so content stands alone
    user_feature_cardinalities: list[int] = field(default_factory=list)  # member feature vocab sizes (+1 unknown)
    n_devices: int = 0  # context: device vocabulary (+1 unknown); 0 = no device context
    use_hour: bool = False  # context: hour of day of the request
    use_watch_fraction: bool = True  # history positions carry how much of the title was watched
    use_recency: bool = True  # history positions carry how long ago they were watched
    dropout: float = 0.1
    normalize: bool = True  # L2-normalise both towers' outputs (cosine score)

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r}: choose one of {POOLINGS}.")
        if self.n_items < 1 or self.dim < 1 or self.max_history < 1:
            raise ValueError(f"n_items={self.n_items}, dim={self.dim}, max_history={self.max_history}: each must be "
                             ">= 1 (in train.py: the catalogue, model.model_config.dim, datamodule.max_history).")


BAG_BACKWARD_POSITIONS = 8192  # history/text positions per slice of the bag backward


class _WeightedBag(torch.autograd.Function):
    """``out[b] = sum_l weights[b, l] * table[indices[b, l]]``, the forward of
    ``F.embedding_bag(mode="sum")``, with a backward that adds each position's weighted
    gradient into its table row (``index_add_``). embedding_bag's own backward sorts all
    B * L indices first; on 2 CPU cores this one is faster (docs/benchmarks.md).
    Positions with weight 0 (padding) contribute nothing, to either pass."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(table, indices, weights)
        return F.embedding_bag(indices, table, mode="sum", per_sample_weights=weights)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        table, indices, weights = ctx.saved_tensors
        grad_table = grad_weights = None
        if ctx.needs_input_grad[0]:
            grad_table = torch.zeros_like(table)
            # In slices of ~8,192 positions, so each slice's weighted rows stay in cache
            # (all 51,200 at once is a 13 MB tensor written and read back: 2x slower).
            step = max(1, BAG_BACKWARD_POSITIONS // max(indices.shape[1], 1))
            for start in range(0, len(indices), step):
                rows = slice(start, start + step)
                contributions = (grad[rows].unsqueeze(1) * weights[rows].unsqueeze(-1)).flatten(0, 1)
                grad_table.index_add_(0, indices[rows].flatten(), contributions)
        if ctx.needs_input_grad[2]:
            grad_weights = (table[indices] * grad.unsqueeze(1)).sum(-1)
        return grad_table, None, grad_weights


def weighted_bag(table: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[B, d]: rows ``indices`` [B, L] of ``table`` [N, d] summed with ``weights`` [B, L]."""
    return _WeightedBag.apply(table, indices, weights)


def _mlp(inputs: int, hidden: int, outputs: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, outputs))


class ItemTower(nn.Module):
    """Title vectors from a learned id embedding plus content (genres, year, text).

    Titles without training interactions (``has_id`` false) never use their id embedding,
    and during training ids are hidden with probability ``id_dropout``, so the content path
    alone yields a useful vector for new releases.
    """

    def __init__(self, config: TwoTowerConfig):
        super().__init__()
        d = config.dim
        self.config = config
        self.id_embedding = nn.Embedding(config.n_items, d) if config.use_item_ids else None
        self.genre_proj = nn.Linear(config.n_genres, d, bias=False) if config.n_genres else None
        self.text_embedding = (
            nn.Embedding(config.text_buckets + 1, d, padding_idx=0) if config.text_buckets else None
        )
        self.year_proj = nn.Linear(2, d)
        self.mlp = _mlp(2 * d, config.hidden, d, config.dropout)
        if self.id_embedding is not None:
            nn.init.normal_(self.id_embedding.weight, std=0.05)

    def content(self, genres: torch.Tensor, year: torch.Tensor, year_known: torch.Tensor,
                tokens: torch.Tensor) -> torch.Tensor:
        """Content vector [N, d] from genres [N, G], year [N], year_known [N], tokens [N, T]."""
        out = self.year_proj(torch.stack([year, year_known], dim=-1))
        if self.genre_proj is not None:
            out = out + self.genre_proj(genres)
        if self.text_embedding is not None:
            # The mean of each title's token vectors (0 = padding; no tokens -> zeros).
            present = (tokens > 0).to(self.text_embedding.weight.dtype)  # the table's: autocast makes out bf16
            weights = present / present.sum(dim=1, keepdim=True).clamp(min=1)
            out = out + weighted_bag(self.text_embedding.weight, tokens, weights)
        return out

    def encode(self, content: torch.Tensor, items: torch.Tensor | None, has_id: torch.Tensor | None) -> torch.Tensor:
        """Vectors [N, d] from content [N, d] and item indices [N] (None = content only)."""
        ids = torch.zeros_like(content)
        if self.id_embedding is not None and items is not None:
            keep = has_id.float() if has_id is not None else torch.ones(len(items), device=content.device)
            if self.training and self.config.id_dropout > 0:
                keep = keep * (torch.rand_like(keep) >= self.config.id_dropout).float()
            ids = self.id_embedding(items) * keep.unsqueeze(-1)
        out = self.mlp(torch.cat([ids, content], dim=-1)) + content + ids
        return F.normalize(out, dim=-1) if self.config.normalize else out


class QueryTower(nn.Module):
    """Member vectors from the recent history, member features and request context.

    No per-member id embedding: a member who joined after training, or whose history
    changed a minute ago, is served without retraining.
    """

    def __init__(self, config: TwoTowerConfig, history_weight: torch.Tensor | None = None):
        """``history_weight``: a trained [n_items + 1, d] history table to use as is (skips
        the random initialisation of the largest tensor when loading for serving)."""
        super().__init__()
        d = config.dim
        self.config = config
        if history_weight is not None:
            if tuple(history_weight.shape) != (config.n_items + 1, d):
                raise ValueError(f"history_weight has shape {tuple(history_weight.shape)}, expected "
                                 f"({config.n_items + 1}, {d}).")
            self.history_embedding = nn.Embedding(config.n_items + 1, d, padding_idx=0, _weight=history_weight)
        else:
            self.history_embedding = nn.Embedding(config.n_items + 1, d, padding_idx=0)
            nn.init.normal_(self.history_embedding.weight, std=0.05)
            with torch.no_grad():
                self.history_embedding.weight[0].zero_()
        self.watch_proj = nn.Linear(1, d) if config.use_watch_fraction else None
        self.recency_embedding = nn.Embedding(RECENCY_BUCKETS + 1, d) if config.use_recency else None
        if config.pooling == "attention":
            self.attention_query = nn.Parameter(torch.randn(d) / math.sqrt(d))
        elif config.pooling == "transformer":
            self.positions = nn.Embedding(config.max_history, d)
            layer = nn.TransformerEncoderLayer(d, nhead=2, dim_feedforward=2 * d, dropout=config.dropout,
                                               batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.user_features = nn.ModuleList(nn.Embedding(c, d) for c in config.user_feature_cardinalities)
        self.device_embedding = nn.Embedding(config.n_devices + 1, d) if config.n_devices else None
        self.hour_embedding = nn.Embedding(25, d) if config.use_hour else None
        self.mlp = _mlp(2 * d, config.hidden, d, config.dropout)

    def forward(
        self,
        history: torch.Tensor,
        history_watch: torch.Tensor | None = None,
        history_age_days: torch.Tensor | None = None,
        user_features: torch.Tensor | None = None,
        device: torch.Tensor | None = None,
        hour: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Query vectors [B, d].

        Args:
            history: [B, L] item index + 1, 0 = padding; most recent view last.
            history_watch: [B, L] watch fraction in [0, 1] (1 when unknown).
            history_age_days: [B, L] days between each view and the request (>= 0).
            user_features: [B, F] codes of member features (0 = unknown).
            device, hour: [B] context codes (0 = unknown; hour is 1 + hour of day).
        """
        mask = history > 0
        buckets = None
        if self.recency_embedding is not None and history_age_days is not None:
            buckets = torch.log2(1 + history_age_days.clamp(min=0)).long().clamp(max=RECENCY_BUCKETS - 1) + 1
        watch = history_watch if self.watch_proj is not None else None
        if self.config.pooling == "mean":
            pooled = self._mean_pool(history, mask, watch, buckets)
        else:
            h = self.history_embedding(history)
            if watch is not None:
                h = h + self.watch_proj(watch.unsqueeze(-1))
            if buckets is not None:
                h = h + self.recency_embedding(buckets)
            pooled = self._pool(h * mask.unsqueeze(-1), mask)
        extra = torch.zeros_like(pooled)
        if user_features is not None:
            for j, embedding in enumerate(self.user_features):
                extra = extra + embedding(user_features[:, j])
        if self.device_embedding is not None and device is not None:
            extra = extra + self.device_embedding(device)
        if self.hour_embedding is not None and hour is not None:
            extra = extra + self.hour_embedding(hour)
        out = self.mlp(torch.cat([pooled, extra], dim=-1)) + pooled
        return F.normalize(out, dim=-1) if self.config.normalize else out

    def _mean_pool(self, history: torch.Tensor, mask: torch.Tensor, watch: torch.Tensor | None,
                   buckets: torch.Tensor | None) -> torch.Tensor:
        # Every per-position term is linear, so the mean of (item + watch + recency) is the
        # sum of three means, each computed without a [B, L, d] tensor.
        weights = mask.float() / mask.sum(dim=1, keepdim=True).clamp(min=1)
        pooled = weighted_bag(self.history_embedding.weight, history, weights)
        if watch is not None:
            pooled = pooled + (self.watch_proj((watch * weights).sum(dim=1, keepdim=True))
                               * weights.sum(1, keepdim=True))
        if buckets is not None:
            # 17 recency rows: each member's weight per bucket times the table. Cheaper than
            # an embedding bag, whose backward sorts all B * L indices.
            shares = torch.zeros(len(history), RECENCY_BUCKETS + 1, dtype=weights.dtype, device=history.device)
            shares.scatter_add_(1, buckets * mask, weights)
            pooled = pooled + shares @ self.recency_embedding.weight
        return pooled

    def _pool(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        counts = mask.sum(dim=1, keepdim=True).clamp(min=1)
        if self.config.pooling == "attention":
            logits = (h @ self.attention_query) / math.sqrt(h.shape[-1])
            logits = logits.masked_fill(~mask, float("-inf"))
            weights = torch.softmax(logits, dim=1).nan_to_num(0.0)  # all-padding rows -> zeros
            return (weights.unsqueeze(-1) * h).sum(dim=1)
        length = h.shape[1]
        # Position 0 = most recent view, so a short history keeps the same recency positions.
        positions = torch.arange(length - 1, -1, -1, device=h.device).clamp(max=self.config.max_history - 1)
        x = h + self.positions(positions)
        empty = ~mask.any(dim=1)
        key_padding = ~mask
        key_padding[empty, -1] = False  # attention needs one visible key per row
        x = self.encoder(x, src_key_padding_mask=key_padding)
        return (x * mask.unsqueeze(-1)).sum(dim=1) / counts


class TwoTower(nn.Module):
    """Both towers plus the catalogue's content features (buffers, saved with the weights).

    ``query(batch)`` -> [B, d]; ``item_vectors(items)`` -> [N, d]; score = inner product.
    """

    def __init__(self, config: TwoTowerConfig, genres: torch.Tensor | None = None, year: torch.Tensor | None = None,
                 year_known: torch.Tensor | None = None, tokens: torch.Tensor | None = None,
                 has_id: torch.Tensor | None = None):
        super().__init__()
        n = config.n_items
        self.config = config
        self.query_tower = QueryTower(config)
        self.item_tower = ItemTower(config)
        self.register_buffer("genres", genres if genres is not None else torch.zeros(n, config.n_genres))
        self.register_buffer("year", year if year is not None else torch.zeros(n))
        self.register_buffer("year_known", year_known if year_known is not None else torch.zeros(n))
        self.register_buffer("tokens", (tokens if tokens is not None else torch.zeros(n, config.max_tokens)).int())
        self.register_buffer("has_id", has_id if has_id is not None else torch.ones(n, dtype=torch.bool))

    def query(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.query_tower(
            batch["history"], batch.get("history_watch"), batch.get("history_age_days"),
            batch.get("user_features"), batch.get("device"), batch.get("hour"),
        )

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """Vectors [N, d] of catalogue titles ``items`` [N]."""
        content = self.item_tower.content(self.genres[items], self.year[items], self.year_known[items],
                                          self.tokens[items].long())
        return self.item_tower.encode(content, items, self.has_id[items])

    @torch.no_grad()
    def all_item_vectors(self, batch_size: int = 65536, progress: bool = False) -> torch.Tensor:
        """Vectors [n_items, d] of the whole catalogue (eval mode, no id dropout)."""
        was_training = self.training
        self.eval()
        device = self.year.device
        starts = tqdm(range(0, self.config.n_items, batch_size), desc="embedding titles", unit="batch",
                      disable=not progress)
        parts = [self.item_vectors(torch.arange(s, min(s + batch_size, self.config.n_items), device=device))
                 for s in starts]
        self.train(was_training)
        return torch.cat(parts)
