"""Model inputs derived from the catalogue and member tables: content and member features.

Everything here is plain tensors plus the small vocabularies needed to encode new titles
and new members the same way at serving time (they are saved with the model).
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

_TOKEN = re.compile(r"[a-z0-9]+")
_YEAR_SUFFIX = re.compile(r"\s*\(\d{4}\)\s*$")


def hash_tokens(text: str, buckets: int, max_tokens: int) -> list[int]:
    """Lower-cased word tokens hashed (CRC32, stable across runs) into ``1..buckets``."""
    tokens = _TOKEN.findall(text.lower())[:max_tokens]
    return [zlib.crc32(t.encode()) % buckets + 1 for t in tokens]


@dataclass
class ItemFeatures:
    """Content features of a catalogue, row ``i`` = item index ``i``.

    genres: [n_items, n_genres] float32 multi-hot.
    year: [n_items] float32, standardised (0 where unknown); year_known: [n_items] float32.
    tokens: [n_items, max_tokens] int64 hashed title/description tokens, 0 = padding.
    """

    genres: torch.Tensor
    year: torch.Tensor
    year_known: torch.Tensor
    tokens: torch.Tensor
    genre_vocab: list[str]
    year_mean: float
    year_std: float
    text_buckets: int

    @property
    def n_items(self) -> int:
        return self.genres.shape[0]

    def encoder_args(self) -> dict[str, Any]:
        """What is needed to encode new titles the same way (saved with the model)."""
        return {
            "genre_vocab": self.genre_vocab, "year_mean": self.year_mean, "year_std": self.year_std,
            "text_buckets": self.text_buckets, "max_tokens": self.tokens.shape[1],
        }


def item_text(items: pd.DataFrame) -> list[str]:
    """Title (without the trailing year) plus description, per row."""
    titles = items["title"].fillna("").astype(str) if "title" in items.columns else pd.Series([""] * len(items))
    titles = titles.str.replace(_YEAR_SUFFIX, "", regex=True)
    if "text" in items.columns:
        titles = titles + " " + items["text"].fillna("").astype(str)
    return titles.tolist()


def build_item_features(
    items: pd.DataFrame,
    genre_vocab: list[str] | None = None,
    year_mean: float | None = None,
    year_std: float | None = None,
    text_buckets: int = 16384,
    max_tokens: int = 24,
) -> ItemFeatures:
    """Encode ``items`` (columns ``genres``, ``year``, ``title``, ``text`` when present).

    Pass the vocabularies of a trained model to encode new titles consistently.
    """
    n = len(items)
    genre_lists = items["genres"].tolist() if "genres" in items.columns else [[] for _ in range(n)]
    if genre_vocab is None:
        genre_vocab = sorted({g for gs in genre_lists for g in gs})
    column = {g: j for j, g in enumerate(genre_vocab)}
    genres = torch.zeros(n, len(genre_vocab))
    rows = [i for i, gs in enumerate(genre_lists) for g in gs if g in column]
    cols = [column[g] for gs in genre_lists for g in gs if g in column]
    genres[rows, cols] = 1.0

    if "year" in items.columns:
        years = pd.to_numeric(items["year"], errors="coerce").astype("float64").to_numpy()
    else:
        years = np.full(n, np.nan)
    known = ~np.isnan(years)
    if year_mean is None:
        year_mean = float(years[known].mean()) if known.any() else 0.0
        year_std = float(years[known].std()) if known.sum() > 1 else 1.0
    year_std = year_std or 1.0
    year = np.where(known, (years - year_mean) / year_std, 0.0)

    texts = item_text(items) if text_buckets > 0 else []  # 0 buckets: no text feature
    token_lists = [hash_tokens(t, text_buckets, max_tokens) for t in texts]
    tokens = torch.zeros(n, max_tokens, dtype=torch.long)
    for i, toks in enumerate(token_lists):
        if toks:
            tokens[i, : len(toks)] = torch.tensor(toks)
    return ItemFeatures(
        genres=genres, year=torch.tensor(year, dtype=torch.float32),
        year_known=torch.tensor(known, dtype=torch.float32), tokens=tokens,
        genre_vocab=list(genre_vocab), year_mean=float(year_mean), year_std=float(year_std),
        text_buckets=text_buckets,
    )


@dataclass
class UserFeatureSpec:
    """How member features are encoded; saved with the model to encode new members.

    Categorical columns map each known value to ``1..len(vocab)``; numeric columns map to
    the bin given by ``edges`` (``1..len(edges)+1``). 0 always means unknown / missing.
    """

    columns: list[str] = field(default_factory=list)
    vocabularies: dict[str, list[str]] = field(default_factory=dict)
    edges: dict[str, list[float]] = field(default_factory=dict)

    @property
    def cardinalities(self) -> list[int]:
        return [len(self.vocabularies[c]) + 1 if c in self.vocabularies else len(self.edges[c]) + 2
                for c in self.columns]

    def encode(self, frame: pd.DataFrame) -> torch.Tensor:
        """[len(frame), n_features] int64 codes; absent columns encode as 0 (unknown)."""
        codes = np.zeros((len(frame), len(self.columns)), dtype=np.int64)
        for j, name in enumerate(self.columns):
            if name not in frame.columns:
                continue
            values = frame[name]
            if name in self.edges:
                numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
                binned = np.digitize(numbers, self.edges[name]) + 1
                codes[:, j] = np.where(np.isnan(numbers), 0, binned)
            else:
                index = {v: i + 1 for i, v in enumerate(self.vocabularies[name])}
                codes[:, j] = values.astype("string").map(index).fillna(0).astype(np.int64).to_numpy()
        return torch.from_numpy(codes)

    def encode_member(self, features: Mapping[str, Any] | None) -> list[int]:
        """Codes of one member's features (``{column: value}``) by the rules of :meth:`encode`,
        without a DataFrame (serving); a binned column's value that is not a finite number
        raises ``ValueError`` instead of becoming unknown."""
        codes = []
        for column in self.columns:
            value = features.get(column) if features else None
            if value is None or value is pd.NA:  # unknown
                codes.append(0)
            elif column in self.edges:
                try:
                    number = float(value)
                except (TypeError, ValueError):
                    number = math.nan
                if not math.isfinite(number):
                    raise ValueError(f"member_features[{column!r}]: expected a finite number, got {value!r}.")
                codes.append(int(np.searchsorted(self.edges[column], number, side="right")) + 1)  # = digitize + 1
            else:
                codes.append(self._vocabulary_codes[column].get(str(value), 0))
        return codes

    @cached_property
    def _vocabulary_codes(self) -> dict[str, dict[str, int]]:
        return {c: {v: i + 1 for i, v in enumerate(vocab)} for c, vocab in self.vocabularies.items()}

    @classmethod
    def fit(cls, users: pd.DataFrame, max_categories: int = 50, numeric_bins: int = 8) -> "UserFeatureSpec":
        """Learn vocabularies and bin edges; skips ids and columns with too many categories."""
        spec = cls()
        for name in users.columns:
            if name == "user_id":
                continue
            values = users[name]
            if pd.api.types.is_numeric_dtype(values) and values.nunique() > max_categories:
                quantiles = np.linspace(0, 1, numeric_bins + 1)[1:-1]
                spec.edges[name] = sorted(set(np.nanquantile(values.to_numpy(dtype=float), quantiles).tolist()))
            else:
                vocab = sorted(values.dropna().astype(str).unique().tolist())
                if not vocab or len(vocab) > max_categories:
                    continue
                spec.vocabularies[name] = vocab
            spec.columns.append(name)
        return spec
