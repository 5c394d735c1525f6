"""The query tower's forward pass for one member in numpy, for serving.

Serving encodes one member per ``recommend`` call. In eager torch a forward of
:class:`~streamrec.models.two_tower.QueryTower` is ~40 small operator calls whose dispatch
(5–25 µs each) adds up to ~0.4 ms, several times the FAISS search it feeds. The same
arithmetic on one member's unpadded arrays is ~12 numpy calls: 0.02–0.03 ms. It reads the
history without padding or a mask, and a history without view times or watch fractions
(the usual request) adds one precomputed vector instead of the recency and watch terms.
Batches of members go through torch (see ``NUMPY_TOWER_MAX_BATCH`` in the recommender).
The embedding tables are views of the torch module's tensors (no copy of the largest
arrays); the MLP weights are copied once, transposed. Both towers give the same vectors
(``tests/test_inference.py`` checks every tower option, with and without watch fractions
and ages).

Mean and attention pooling are implemented; the transformer history encoder is served by
torch (``supports`` tells which).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erf

from streamrec.models.two_tower import RECENCY_BUCKETS, QueryTower

POOLINGS = ("mean", "attention")
_ZERO, _HALF, _ONE = np.float32(0), np.float32(0.5), np.float32(1)
_SQRT_HALF = np.float32(np.sqrt(0.5))
_EPS = 1e-12  # F.normalize's eps


def supports(tower: QueryTower) -> bool:
    """Whether :class:`NumpyQueryTower` can serve this tower."""
    return tower.config.pooling in POOLINGS


class NumpyQueryTower:
    """``QueryTower.forward`` in eval mode for one member, on numpy arrays."""

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
        # What every title of a history gains when no watch fractions or view times are
        # given: watch fraction 1 through Linear(1, d), and the recency row of age 0.
        self.fully_watched = self.watch_weight + self.watch_bias if config.use_watch_fraction else None
        self.viewed_now = self.recency[_bucket(np.zeros(1, dtype=np.float32))[0]] if config.use_recency else None
        self.default_terms = np.zeros(d, dtype=np.float32)
        for term in (self.fully_watched, self.viewed_now):
            if term is not None:
                self.default_terms += term
        # Mean pooling of m titles is one matrix product with weights 1/m, as in torch.
        self.mean_weights = [np.full(m, 1 / max(m, 1), dtype=np.float32) for m in range(config.max_history + 1)]
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
        watch: np.ndarray | None = None,
        age_days: np.ndarray | None = None,
        user_features: np.ndarray | None = None,
        device: int = 0,
        hour: int = 0,
    ) -> np.ndarray:
        """One member's query vector [1, d] float32.

        Args:
            history: [m] codes (item row + 1, no padding), most recent view last, at most
                ``max_history`` of them.
            watch: [m] float32 watch fractions; None = every title fully watched.
            age_days: [m] float32 days between each view and the request; None = 0 days
                for every view (what the torch tower reads for a request without times).
            user_features: [F] codes of the member's features (0 = unknown), for a
                tower with member features.
            device, hour: context codes (0 = unknown; hour is 1 + hour of day), read by a
                tower with device or hour embeddings.

        Codes must be valid, non-negative table rows, as the recommender builds them:
        numpy would read a negative code from the end of a table where torch raises.
        """
        m = len(history)
        if m > self.config.max_history:
            raise ValueError(f"history: {m} codes; the tower reads at most {self.config.max_history} (the latest).")
        rows = self.history.take(history, axis=0)  # [m, d]
        if watch is not None or age_days is not None or self.attention_query is not None:
            if self.watch_weight is not None:
                rows = rows + (np.outer(watch, self.watch_weight) + self.watch_bias if watch is not None
                               else self.fully_watched)
            if self.recency is not None:
                rows = rows + (self.recency.take(_bucket(age_days), axis=0) if age_days is not None
                               else self.viewed_now)
            pooled = self._attention_pool(rows) if self.attention_query is not None \
                else self.mean_weights[m] @ rows
        else:  # the usual request: the mean of the titles plus the terms every title gains
            pooled = self.mean_weights[m] @ rows
            if m:
                pooled += self.default_terms
        hidden = pooled @ self.first_pooled
        hidden += self.first_bias
        extra = None
        if user_features is not None:
            for j, table in enumerate(self.user_features):
                extra = table[user_features[j]] if extra is None else extra + table[user_features[j]]
        if self.device is not None:  # code 0 (unknown) has a learned row too
            extra = self.device[device] if extra is None else extra + self.device[device]
        if self.hour is not None:
            extra = self.hour[hour] if extra is None else extra + self.hour[hour]
        if extra is not None:
            hidden += extra @ self.first_extra
        hidden *= erf(hidden * _SQRT_HALF) * _HALF + _HALF  # exact GELU: x * (1 + erf(x / sqrt 2)) / 2
        out = hidden @ self.second
        out += self.second_bias
        out += pooled
        if self.config.normalize:
            out /= np.float32(max(math.sqrt(out @ out), _EPS))
        return out[None, :]

    def _attention_pool(self, h: np.ndarray) -> np.ndarray:
        if not len(h):  # torch: an all-padding row's softmax is NaN, zeroed
            return np.zeros(h.shape[1], dtype=np.float32)
        logits = (h @ self.attention_query) / np.float32(math.sqrt(h.shape[1]))
        weights = np.exp(logits - logits.max())
        weights /= weights.sum()
        return weights @ h


def _bucket(age_days: np.ndarray) -> np.ndarray:
    """Recency bucket of each age, as ``QueryTower.forward`` computes it."""
    age = np.maximum(age_days.astype(np.float32, copy=False), _ZERO)
    return np.minimum(np.log2(age + _ONE).astype(np.int64), RECENCY_BUCKETS - 1) + 1
