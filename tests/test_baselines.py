"""Reference baselines: each score against its definition on a small matrix, and bad settings."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from streamrec.baselines import EASE, ItemKNN, MostPopular

# 6 members x 5 titles, play counts (distinct similarities: no ties among neighbours).
X = np.random.default_rng(0).integers(0, 4, size=(6, 5)).astype(np.float32)
USERS = torch.arange(len(X))


def test_most_popular_scores_training_counts_for_everyone():
    scores = MostPopular().fit(sp.csr_matrix(X)).score(torch.tensor([0, 3]))
    assert scores.tolist() == [X.sum(0).tolist()] * 2


@pytest.mark.parametrize("neighbours, shrink", [(4, 0.0), (1, 0.0), (2, 1.5)])
def test_item_knn_is_cosine_kept_to_the_top_neighbours(neighbours, shrink):
    norms = np.linalg.norm(X, axis=0)
    similarity = (X.T @ X) / (np.outer(norms, norms) + shrink + 1e-12)
    np.fill_diagonal(similarity, 0.0)
    kept = np.zeros_like(similarity)
    for i, row in enumerate(similarity):  # row i: title i's neighbours
        top = np.argsort(-row, kind="stable")[:neighbours]
        kept[i, top] = row[top]
    expected = X @ kept.T  # a member's score of title i sums i's similarity to the titles they watched
    got = ItemKNN(neighbours, shrink, block_size=3).fit(sp.csr_matrix(X)).score(USERS).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_ease_is_the_closed_form_with_a_zero_diagonal():
    l2 = 2.0
    precision = np.linalg.inv(X.T.astype(np.float64) @ X + l2 * np.eye(X.shape[1]))
    weights = -precision / np.diag(precision)
    np.fill_diagonal(weights, 0.0)
    got = EASE(l2).fit(sp.csr_matrix(X)).score(USERS).numpy()
    np.testing.assert_allclose(got, X @ weights, rtol=1e-5, atol=1e-6)


def test_numpy_numbers_are_valid_settings():
    knn = ItemKNN(np.int64(3), np.float32(0.5), np.int32(2))
    assert (type(knn.neighbours), type(knn.shrink), type(knn.block_size)) == (int, float, int)
    assert type(EASE(np.float64(10)).l2) is float


@pytest.mark.parametrize("kwargs, message", [
    ({"neighbours": 0}, r"^neighbours=0: expected a whole number >= 1\.$"),
    ({"neighbours": 2.5}, r"^neighbours=2\.5: expected a whole number >= 1\.$"),
    ({"neighbours": "abc"}, r"^neighbours='abc': expected a whole number >= 1\.$"),
    ({"neighbours": True}, r"^neighbours=True: expected a whole number >= 1\.$"),
    ({"block_size": 0}, r"^block_size=0: expected a whole number >= 1\.$"),
    ({"shrink": -1.0}, r"^shrink=-1\.0: expected a number >= 0\.$"),
    ({"shrink": "abc"}, r"^shrink='abc': expected a number >= 0\.$"),
    ({"shrink": float("nan")}, r"^shrink=nan: expected a number >= 0\.$"),
])
def test_item_knn_refuses_bad_settings_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ItemKNN(**kwargs)


@pytest.mark.parametrize("l2", [0, -5.0, "abc", float("inf"), 10**400, None, True])
def test_ease_refuses_a_bad_l2_by_name(l2):
    with pytest.raises(ValueError, match=rf"^l2={l2!r}: expected a number > 0"):
        EASE(l2)
