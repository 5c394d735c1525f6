"""Reference baselines every model of ours is reported beside.

Each has ``fit(train)`` on a binary member x title matrix and ``score(users)`` returning a
dense score block ``[len(users), n_items]`` — exactly what
:func:`streamrec.evaluation.evaluate_ranking` consumes.

- :class:`MostPopular`: training interaction counts, the same for every member.
- :class:`ItemKNN`: item-based collaborative filtering, cosine similarity between titles'
  member vectors, each title keeping its ``neighbours`` most similar titles.
- :class:`EASE`: Steck, "Embarrassingly Shallow Autoencoders for Sparse Data" (WWW 2019):
  closed-form ridge regression of each title on all others with a zero diagonal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch

from streamrec.validation import is_finite_number, is_whole_number

if TYPE_CHECKING:
    import pandas as pd

    from streamrec.data import SplitData


def _rows_dense(matrix: sp.csr_matrix, users: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(matrix[users.cpu().numpy()].toarray())


class MostPopular:
    """Scores every title by its number of training interactions."""

    name = "MostPopular"

    def fit(self, train: sp.csr_matrix) -> "MostPopular":
        self.counts = torch.from_numpy(np.asarray(train.sum(axis=0)).ravel().astype(np.float32))
        return self

    def score(self, users: torch.Tensor) -> torch.Tensor:
        return self.counts.expand(len(users), -1).clone()


class ItemKNN:
    """Item-based kNN with cosine similarity.

    Args:
        neighbours: similar titles kept per title (the rest of the row is zeroed).
        shrink: added to the cosine denominator to damp similarities from few co-views.
    """

    name = "ItemKNN"

    def __init__(self, neighbours: int = 100, shrink: float = 0.0, block_size: int = 2048):
        for name, value in (("neighbours", neighbours), ("block_size", block_size)):
            if not is_whole_number(value) or value < 1:
                raise ValueError(f"{name}={value!r}: expected a whole number >= 1.")
        if not is_finite_number(shrink) or shrink < 0:
            raise ValueError(f"shrink={shrink!r}: expected a number >= 0.")
        self.neighbours, self.shrink, self.block_size = int(neighbours), float(shrink), int(block_size)

    def fit(self, train: sp.csr_matrix) -> "ItemKNN":
        self.train = train.tocsr().astype(np.float32)
        n_items = train.shape[1]
        norms = np.sqrt(np.asarray(self.train.multiply(self.train).sum(axis=0)).ravel())
        item_user = self.train.T.tocsr()
        k = min(self.neighbours, n_items)
        rows, cols, vals = [], [], []
        # Similarities are built block by block so memory stays O(block x n_items).
        for start in range(0, n_items, self.block_size):
            stop = min(start + self.block_size, n_items)
            co = torch.from_numpy((item_user[start:stop] @ self.train).toarray())
            denom = torch.from_numpy(np.outer(norms[start:stop], norms) + self.shrink + 1e-12)
            sim = (co / denom).float()
            sim[torch.arange(stop - start), torch.arange(start, stop)] = 0.0
            top = sim.topk(k, dim=1)
            rows.append(np.repeat(np.arange(start, stop), k))
            cols.append(top.indices.numpy().ravel())
            vals.append(top.values.numpy().ravel())
        # Stored transposed: score(u) = x_u @ S, where S[j, i] = sim(i, j) for i's neighbours j.
        self.similarity = sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(cols), np.concatenate(rows))), shape=(n_items, n_items)
        )
        self.similarity.eliminate_zeros()
        return self

    def score(self, users: torch.Tensor) -> torch.Tensor:
        rows = self.train[users.cpu().numpy()]
        return torch.from_numpy((rows @ self.similarity).toarray().astype(np.float32))


class EASE:
    """EASE^R: ``B = I - P / diag(P)`` with ``P = (X^T X + l2 I)^-1``, scores ``X_u B``.

    Args:
        l2: ridge strength lambda (Steck uses a few hundred on MovieLens).
    """

    name = "EASE"

    def __init__(self, l2: float = 500.0):
        if not is_finite_number(l2) or l2 <= 0:
            raise ValueError(f"l2={l2!r}: expected a number > 0 (the Gram matrix must be invertible).")
        self.l2 = float(l2)

    def fit(self, train: sp.csr_matrix) -> "EASE":
        self.train = train.tocsr().astype(np.float32)
        gram = torch.from_numpy((self.train.T @ self.train).toarray()).double()
        gram.diagonal().add_(self.l2)
        precision = torch.linalg.inv(gram)
        weights = -precision / precision.diagonal()
        weights.diagonal().zero_()
        self.weights = weights.float()
        return self

    def score(self, users: torch.Tensor) -> torch.Tensor:
        return _rows_dense(self.train, users) @ self.weights


BASELINES = {cls.name: cls for cls in (MostPopular, ItemKNN, EASE)}


def ranking_inputs(data: "SplitData", part: str = "test"):
    """What every model is evaluated against on ``part``, so all are scored the same way.

    Returns the held-out matrix, the seen matrix to mask (train, plus validation when
    ``part`` is test), training popularity of the seen part [n_items], and the genre
    matrix (None when the catalogue has no genres).
    """
    seen = data.matrix(["train", "val"] if part == "test" else ["train"])
    genres, _ = data.genre_matrix()
    popularity = np.asarray(seen.sum(axis=0)).ravel().astype(np.int64)
    return data.matrix(part), seen, popularity, genres if genres.shape[1] else None


def evaluate_baselines(
    data: "SplitData",
    models: dict[str, object],
    ks: tuple[int, ...] = (10, 20),
    part: str = "test",
    batch_size: int = 1024,
) -> "pd.DataFrame":
    """Fit each model on train (+ validation when evaluating test) and evaluate ``part``.

    Returns one row per model with every metric of ``evaluate_ranking`` plus fit and
    evaluation seconds.
    """
    import time

    import pandas as pd

    from streamrec.evaluation import evaluate_ranking

    target, seen, popularity, genres = ranking_inputs(data, part)
    rows = []
    for name, model in models.items():
        start = time.perf_counter()
        model.fit(seen)
        fitted = time.perf_counter()
        metrics = evaluate_ranking(model.score, target, exclude=seen, ks=ks, batch_size=batch_size,
                                   item_popularity=popularity, item_genres=genres)
        rows.append({"model": name, **metrics, "fit_s": fitted - start, "eval_s": time.perf_counter() - fitted})
    return pd.DataFrame(rows).set_index("model")
