"""Retrieval losses on tiny tensors, against cross-entropies written out by hand.

Every expectation is ``-logit[label] + log(sum(exp(kept logits)))`` of a row whose logits
are listed in a comment; a masked candidate simply drops out of the sum.
"""

from __future__ import annotations

import math

import pytest
import torch

from streamrec.models.losses import (
    FullSoftmaxLoss,
    SampledSoftmaxLoss,
    accidental_hits,
    mixture_log_q,
)

# B = 2 queries, d = 2; candidate 2 is an extra (uniform) negative.
QUERY = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
CANDIDATES = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
# QUERY @ CANDIDATES.T = [[1, 2, 3],
#                         [0, 1, 1]]


def ce(label_logit: float, kept_logits: list[float]) -> float:
    """Cross-entropy of one row: the label's logit against every unmasked logit (label included)."""
    return -label_logit + math.log(sum(math.exp(x) for x in kept_logits))


def sampled(temperature: float = 1.0, logq: bool = False, hits: bool = False) -> SampledSoftmaxLoss:
    return SampledSoftmaxLoss(temperature=temperature, logq_correction=logq, remove_accidental_hits=hits)


# -- SampledSoftmaxLoss ------------------------------------------------------------------
def test_plain_in_batch_softmax():
    # Only the B = 2 in-batch candidates: logits [[1, 2], [0, 1]], labels 0 and 1.
    loss = sampled()(QUERY, CANDIDATES[:2], torch.tensor([0, 1]))
    expected = (ce(1, [1, 2]) + ce(1, [0, 1])) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_temperature_divides_the_logits():
    # T = 0.5: logits [[2, 4], [0, 2]].
    loss = sampled(temperature=0.5)(QUERY, CANDIDATES[:2], torch.tensor([0, 1]))
    expected = (ce(2, [2, 4]) + ce(2, [0, 2])) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_logq_subtracts_log_q_of_each_candidate_column():
    # log q = [0.5, -1, 2] per column: logits [[0.5, 3, 1], [-0.5, 2, -1]].
    log_q = torch.tensor([0.5, -1.0, 2.0])
    loss = sampled(logq=True)(QUERY, CANDIDATES, torch.tensor([0, 1, 2]), log_q)
    expected = (ce(0.5, [0.5, 3, 1]) + ce(2, [-0.5, 2, -1])) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_logq_is_ignored_when_correction_is_off():
    log_q = torch.tensor([0.5, -1.0, 2.0])
    loss = sampled(logq=False)(QUERY, CANDIDATES, torch.tensor([0, 1, 2]), log_q)
    expected = (ce(1, [1, 2, 3]) + ce(1, [0, 1, 1])) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_extra_uniform_negatives_are_columns_after_the_batch():
    # Candidate 2 is a negative for both rows: logits [[1, 2, 3], [0, 1, 1]].
    loss = sampled()(QUERY, CANDIDATES, torch.tensor([0, 1, 2]))
    expected = (ce(1, [1, 2, 3]) + ce(1, [0, 1, 1])) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_accidental_hits_mask_other_rows_with_the_same_positive_not_the_diagonal():
    # B = 3: rows 0 and 1 share title 7, row 2 has title 9.
    query = torch.tensor([[1.0, 2.0], [0.0, 1.0], [1.0, 0.0]])
    candidates = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    ids = torch.tensor([7, 7, 9])
    # logits [[1, 2, 3], [0, 1, 1], [1, 0, 1]]
    loss = sampled(hits=True)(query, candidates, ids)
    expected = (
        ce(1, [1, 3])  # column 1 (also title 7) masked, own column 0 kept
        + ce(1, [1, 1])  # column 0 masked, own column 1 kept
        + ce(1, [1, 0, 1])  # nothing masked
    ) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # Without removal the duplicate is an ordinary negative.
    kept = sampled(hits=False)(query, candidates, ids)
    assert kept.item() == pytest.approx((ce(1, [1, 2, 3]) + ce(1, [0, 1, 1]) + ce(1, [1, 0, 1])) / 3, rel=1e-6)


def test_uniform_negative_equal_to_a_rows_positive_is_masked_for_that_row_only():
    # Extra candidate 2 is title 4 = row 0's positive; for row 1 it is a real negative.
    ids = torch.tensor([4, 5, 4])
    loss = sampled(hits=True)(QUERY, CANDIDATES, ids)
    expected = (ce(1, [1, 2]) + ce(1, [0, 1, 1])) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("batch, extra", [(64, 0), (64, 40), (1, 5)])
def test_accidental_hit_pairs_equal_the_full_comparison(batch, extra):
    generator = torch.Generator().manual_seed(batch + extra)
    ids = torch.randint(0, 12, (batch + extra,), generator=generator)  # many repeats
    same = ids.unsqueeze(0) == ids[:batch].unsqueeze(1)
    same[:, :batch].fill_diagonal_(False)
    rows, columns = accidental_hits(ids, batch)
    found = torch.zeros_like(same)
    found[rows, columns] = True
    assert torch.equal(found, same)
    assert len(rows) == int(same.sum())  # each pair once


def test_accidental_hits_and_logq_combine():
    # logQ first, then masking: logits [[0.5, 3, 1], [-0.5, 2, -1]]; column 2 = row 0's title.
    log_q = torch.tensor([0.5, -1.0, 2.0])
    loss = SampledSoftmaxLoss(temperature=1.0)(QUERY, CANDIDATES, torch.tensor([4, 5, 4]), log_q)
    expected = (ce(0.5, [0.5, 3]) + ce(2, [-0.5, 2, -1])) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_sampled_loss_has_finite_gradients_with_masking():
    query = QUERY.clone().requires_grad_(True)
    loss = SampledSoftmaxLoss(temperature=0.05)(query, CANDIDATES, torch.tensor([7, 7, 7]), torch.zeros(3))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(query.grad).all()


@pytest.mark.parametrize("temperature", [0.0, -0.1])
@pytest.mark.parametrize("loss_class", [SampledSoftmaxLoss, FullSoftmaxLoss])
def test_non_positive_temperature_raises(loss_class, temperature):
    with pytest.raises(ValueError, match="temperature"):
        loss_class(temperature=temperature)


def test_logq_correction_without_log_q_raises():
    with pytest.raises(ValueError, match="candidate_log_q"):
        SampledSoftmaxLoss(logq_correction=True)(QUERY, CANDIDATES, torch.tensor([0, 1, 2]))


# -- FullSoftmaxLoss ---------------------------------------------------------------------
# N = 4 titles; QUERY2 @ ITEMS.T = [[1, 0, 1, -1],
#                                   [0, 1, 1,  0]]
QUERY2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
ITEMS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
TARGETS = torch.tensor([2, 1])
# History holds item index + 1, 0 = padding. Row 0 saw titles 1 and 2 (its target);
# row 1 saw titles 0 and 3.
HISTORY = torch.tensor([[0, 2, 3], [1, 0, 4]])


def test_full_softmax_without_history_mask_is_plain_cross_entropy():
    loss = FullSoftmaxLoss(temperature=1.0, mask_history=False)(QUERY2, ITEMS, TARGETS, HISTORY)
    expected = (ce(1, [1, 0, 1, -1]) + ce(1, [0, 1, 1, 0])) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_full_softmax_temperature():
    loss = FullSoftmaxLoss(temperature=0.5, mask_history=False)(QUERY2, ITEMS, TARGETS)
    expected = (ce(2, [2, 0, 2, -2]) + ce(2, [0, 2, 2, 0])) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_full_softmax_masks_history_but_never_the_target_or_padding():
    loss = FullSoftmaxLoss(temperature=1.0, mask_history=True)(QUERY2, ITEMS, TARGETS, HISTORY)
    # Row 0: title 1 masked; title 2 is the target (kept); padding must not mask title 3
    #        (index 0 - 1 = -1 would be the last column).
    # Row 1: titles 0 and 3 masked.
    expected = (ce(1, [1, 1, -1]) + ce(1, [1, 1])) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_full_softmax_mask_history_without_history_is_unmasked():
    loss = FullSoftmaxLoss(temperature=1.0, mask_history=True)(QUERY2, ITEMS, TARGETS, None)
    expected = (ce(1, [1, 0, 1, -1]) + ce(1, [0, 1, 1, 0])) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_full_softmax_all_padding_history_masks_nothing():
    loss = FullSoftmaxLoss(temperature=1.0)(QUERY2, ITEMS, TARGETS, torch.zeros(2, 3, dtype=torch.long))
    expected = (ce(1, [1, 0, 1, -1]) + ce(1, [0, 1, 1, 0])) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


# -- mixture_log_q -----------------------------------------------------------------------
def test_mixture_log_q_is_log_of_expected_count_per_batch():
    p = torch.tensor([0.5, 0.25, 0.25, 0.0])
    # Q(j) = B p(j) + M / N with B = 4, M = 2, N = 4.
    expected = torch.tensor([math.log(2.5), math.log(1.5), math.log(1.5), math.log(0.5)])
    assert torch.allclose(mixture_log_q(p, batch_size=4, n_uniform=2), expected, atol=1e-6)
    # Without uniform negatives it is log(B p); a never-seen title stays finite.
    in_batch = mixture_log_q(p, batch_size=4, n_uniform=0)
    assert torch.allclose(in_batch[:3], torch.tensor([math.log(2.0), 0.0, 0.0]), atol=1e-6)
    assert torch.isfinite(in_batch[3]) and in_batch[3] < -20
