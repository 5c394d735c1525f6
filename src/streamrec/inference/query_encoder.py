"""The query tower's forward pass in numpy, for serving.

Serving encodes one member, or a few, per call. In eager torch a forward of
:class:`~streamrec.models.two_tower.QueryTower` for one member is ~40 small operator
calls whose dispatch (5–25 µs each) adds up to ~0.4 ms, several times the FAISS search it
feeds; the same arithmetic in numpy takes ~0.06–0.1 ms. Past ~256 members torch's
multi-threaded kernels win (docs/benchmarks.md), so the recommender uses this class for
small batches only. The embedding tables are views of the torch module's tensors (no
copy of the largest arrays); the MLP weights are copied once, transposed. Both towers
give the same vectors (``tests/test_inference.py`` checks every tower option, with and
without watch fractions and ages).

Mean and attention pooling are implemented; the transformer history encoder is served by
torch (``supports`` tells which).
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf

from streamrec.models.two_tower import RECENCY_BUCKETS, QueryTower

POOLINGS = ("mean", "attention")
_ZERO, _HALF, _ONE = np.float32(0), np.float32(0.5), np.float32(1)
_SQRT_HALF, _EPS = np.float32(np.sqrt(0.5)), np.float32(1e-12)  # F.normalize's eps


def supports(tower: QueryTower) -> bool:
    """Whether :class:`NumpyQueryTower` can serve this tower."""
    return tower.config.pooling in POOLINGS


class NumpyQueryTower:
    """``QueryTower.forward`` in eval mode, on numpy arrays (same arguments, same result)."""

    def __init__(self, tower: QueryTower):
        config = tower.config
        if not supports(tower):
            raise ValueError(f"pooling={config.pooling!r}: the numpy query tower serves {POOLINGS}; use the torch "
                             "module for the others.")
        state = {key: value.detach().numpy() for key, value in tower.state_dict().items()}
        d = config.dim
        self.config = config
        self.history = state["history_embedding.weight"]
        self.watch_weight = state["watch_proj.weight"][:, 0] if config.use_watch_fraction else None
        self.watch_bias = state["watch_proj.bias"] if config.use_watch_fraction else None
        self.recency = state["recency_embedding.weight"] if config.use_recency else None
        self.attention_query = state["attention_query"] if config.pooling == "attention" else None
        self.user_features = [state[f"user_features.{j}.weight"] for j in range(len(config.user_feature_cardinalities))]
        self.device = state["device_embedding.weight"] if config.n_devices else None
        self.hour = state["hour_embedding.weight"] if config.use_hour else None
        # mlp = Linear(2d, hidden) -> GELU -> Dropout -> Linear(hidden, d); the first layer's
        # input is [pooled, extra], so its weight is kept as two halves (no concatenation).
        first = state["mlp.0.weight"]
        self.first_pooled = np.ascontiguousarray(first[:, :d].T)
        self.first_extra = np.ascontiguousarray(first[:, d:].T)
        self.first_bias = state["mlp.0.bias"]
        self.second = np.ascontiguousarray(state["mlp.3.weight"].T)
        self.second_bias = state["mlp.3.bias"]

    def __call__(
        self,
        history: np.ndarray,
        history_watch: np.ndarray | None = None,
        history_age_days: np.ndarray | None = None,
        user_features: np.ndarray | None = None,
        device: np.ndarray | None = None,
        hour: np.ndarray | None = None,
    ) -> np.ndarray:
        """Query vectors [B, d] float32; arguments as in ``QueryTower.forward``, as arrays.

        Codes (history, user features, device, hour) must be valid, non-negative table
        rows, as the recommender builds them: numpy would read a negative code from the
        end of a table where torch raises.
        """
        mask = history > 0
        buckets = None
        if self.recency is not None and history_age_days is not None:
            age = np.maximum(history_age_days.astype(np.float32, copy=False), _ZERO)
            buckets = np.minimum(np.log2(age + _ONE).astype(np.int64), RECENCY_BUCKETS - 1) + 1
        watch = history_watch.astype(np.float32, copy=False) if self.watch_weight is not None \
            and history_watch is not None else None
        if self.attention_query is None:
            pooled = self._mean_pool(history, mask, watch, buckets)
        else:
            pooled = self._attention_pool(history, mask, watch, buckets)
        hidden = pooled @ self.first_pooled + self.first_bias
        extra = None
        if user_features is not None:
            for j, table in enumerate(self.user_features):
                extra = table[user_features[:, j]] if extra is None else extra + table[user_features[:, j]]
        if self.device is not None and device is not None:
            extra = self.device[device] if extra is None else extra + self.device[device]
        if self.hour is not None and hour is not None:
            extra = self.hour[hour] if extra is None else extra + self.hour[hour]
        if extra is not None:
            hidden += extra @ self.first_extra
        hidden *= erf(hidden * _SQRT_HALF) * _HALF + _HALF  # exact GELU: x * (1 + erf(x / sqrt 2)) / 2
        out = hidden @ self.second + self.second_bias + pooled
        if self.config.normalize:
            out /= np.maximum(np.sqrt((out[:, None, :] @ out[:, :, None])[:, 0]), _EPS)
        return out

    def _mean_pool(self, history: np.ndarray, mask: np.ndarray, watch: np.ndarray | None,
                   buckets: np.ndarray | None) -> np.ndarray:
        total = mask.sum(axis=1, keepdims=True, dtype=np.float32)
        weights = (mask / np.maximum(total, _ONE))[:, None, :]  # [B, 1, L] float32
        pooled = (weights @ self.history[history])[:, 0]
        if watch is not None:  # the mean watch fraction through Linear(1, d), zero for an empty history
            share = weights @ watch[:, :, None]  # [B, 1, 1]
            pooled += share[:, 0] * self.watch_weight + np.minimum(total, _ONE) * self.watch_bias
        if buckets is not None:
            pooled += (weights @ self.recency[buckets * mask])[:, 0]
        return pooled

    def _attention_pool(self, history: np.ndarray, mask: np.ndarray, watch: np.ndarray | None,
                        buckets: np.ndarray | None) -> np.ndarray:
        h = self.history[history]  # [B, L, d]
        if watch is not None:
            h = h + watch[..., None] * self.watch_weight + self.watch_bias
        if buckets is not None:
            h = h + self.recency[buckets]
        h = h * mask[..., None]
        logits = np.where(mask, (h @ self.attention_query) / np.float32(np.sqrt(h.shape[-1])), -np.inf)
        top = logits.max(axis=1, keepdims=True)
        with np.errstate(invalid="ignore"):  # all-padding rows: -inf - -inf, then zeroed below
            weights = np.exp(logits - top)
            weights /= weights.sum(axis=1, keepdims=True)
        weights = np.nan_to_num(weights, nan=0.0).astype(np.float32, copy=False)
        return (weights[:, None, :] @ h)[:, 0]
