"""The two towers on tiny inputs: shapes, padding, the fast mean pool, id handling, context."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from streamrec.models import two_tower
from streamrec.models.two_tower import POOLINGS, ItemTower, QueryTower, TwoTower, TwoTowerConfig, weighted_bag

N_ITEMS = 5


def config(**overrides) -> TwoTowerConfig:
    args = dict(n_items=N_ITEMS, n_genres=2, text_buckets=8, max_tokens=3, dim=4, hidden=8, max_history=8)
    args.update(overrides)
    return TwoTowerConfig(**args)


def item_features(has_id: list[bool] | None = None) -> dict[str, torch.Tensor]:
    return {
        "genres": torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0]]),
        "year": torch.tensor([0.5, -1.0, 0.0, 0.0, 2.0]),
        "year_known": torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0]),
        "tokens": torch.tensor([[1, 2, 0], [3, 0, 0], [0, 0, 0], [4, 5, 6], [1, 0, 0]]),
        "has_id": torch.tensor(has_id if has_id is not None else [True] * N_ITEMS),
    }


# Member 0: three titles; member 1: nothing (all padding); member 2: a full history.
HISTORY = torch.tensor([[0, 0, 0, 0, 0, 2, 3, 4], [0] * 8, [1, 2, 3, 4, 5, 1, 2, 3]])
WATCH = torch.tensor([[0.0] * 5 + [0.2, 1.0, 0.5], [0.0] * 8, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]])
AGE = torch.tensor([[0.0] * 5 + [9.0, 2.0, 0.0], [0.0] * 8, [400.0, 90.0, 30.0, 12.0, 7.0, 3.0, 1.0, 0.5]])


# -- configuration ----------------------------------------------------------------------
def test_unknown_pooling_raises_with_the_choices():
    with pytest.raises(ValueError, match="pooling='lstm'.*mean"):
        TwoTowerConfig(n_items=3, pooling="lstm")


@pytest.mark.parametrize("field", ["n_items", "dim", "max_history"])
def test_non_positive_sizes_raise(field):
    with pytest.raises(ValueError, match=field):
        config(**{field: 0})


# -- query tower: every pooling ---------------------------------------------------------
@pytest.mark.parametrize("pooling", POOLINGS)
def test_query_shapes_unit_norm_and_no_nans_including_empty_history(pooling):
    torch.manual_seed(0)
    tower = QueryTower(config(pooling=pooling)).eval()
    out = tower(HISTORY, WATCH, AGE)
    assert out.shape == (3, 4)
    assert torch.isfinite(out).all()
    assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-5)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_query_without_normalize_is_not_forced_to_unit_norm(pooling):
    torch.manual_seed(0)
    tower = QueryTower(config(pooling=pooling, normalize=False)).eval()
    out = tower(HISTORY, WATCH, AGE)
    assert out.shape == (3, 4) and torch.isfinite(out).all()
    assert not torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-3)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_training_step_gradients_are_finite_with_an_all_padding_row(pooling):
    torch.manual_seed(0)
    tower = QueryTower(config(pooling=pooling)).train()
    tower(HISTORY, WATCH, AGE).sum().backward()
    grads = [p.grad for p in tower.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_query_does_not_depend_on_the_amount_of_left_padding(pooling):
    torch.manual_seed(0)
    tower = QueryTower(config(pooling=pooling)).eval()
    short = tower(torch.tensor([[2, 3, 4]]), torch.tensor([[0.2, 1.0, 0.5]]), torch.tensor([[9.0, 2.0, 0.0]]))
    long = tower(HISTORY[:1], WATCH[:1], AGE[:1])  # same three titles after 5 padding positions
    assert torch.allclose(short, long, atol=1e-5)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_values_at_padding_positions_are_ignored(pooling):
    torch.manual_seed(0)
    tower = QueryTower(config(pooling=pooling)).eval()
    noisy_watch, noisy_age = WATCH.clone(), AGE.clone()
    noisy_watch[HISTORY == 0] = 0.9
    noisy_age[HISTORY == 0] = 1000.0
    assert torch.allclose(tower(HISTORY, noisy_watch, noisy_age), tower(HISTORY, WATCH, AGE), atol=1e-5)


def test_transformer_counts_positions_from_the_most_recent_view():
    # The same titles in a different order must give a different vector (positions matter),
    # unlike mean pooling, which is order-free.
    torch.manual_seed(0)
    transformer = QueryTower(config(pooling="transformer")).eval()
    mean = QueryTower(config(pooling="mean")).eval()
    a, b = torch.tensor([[0, 2, 3, 4]]), torch.tensor([[0, 4, 3, 2]])
    assert not torch.allclose(transformer(a), transformer(b), atol=1e-4)
    assert torch.allclose(mean(a), mean(b), atol=1e-6)


# -- the fast mean pool equals the explicit computation ------------------------------------
def explicit_mean_pool(tower: QueryTower, history, watch, buckets) -> torch.Tensor:
    """Embed, add the watch and recency terms, mask padding, average over the real positions."""
    h = tower.history_embedding.weight[history]
    if watch is not None:
        h = h + watch.unsqueeze(-1) * tower.watch_proj.weight[:, 0] + tower.watch_proj.bias
    if buckets is not None:
        h = h + tower.recency_embedding.weight[buckets]
    mask = (history > 0).float().unsqueeze(-1)
    return (h * mask).sum(1) / mask.sum(1).clamp(min=1)


# Recency bucket = floor(log2(1 + days)) + 1, capped at 16, by hand for AGE:
#   0 -> 1, 0.5 -> 1, 1 -> 2, 2 -> 2, 3 -> 3, 7 -> 4, 9 -> 4, 12 -> 4, 30 -> 5, 90 -> 7, 400 -> 9.
BUCKETS = torch.tensor([[1] * 5 + [4, 2, 1], [1] * 8, [9, 7, 5, 4, 4, 3, 2, 1]])


@pytest.mark.parametrize("with_watch, with_age", [(True, True), (True, False), (False, True), (False, False)])
def test_fast_mean_pool_equals_explicit_mean(with_watch, with_age):
    torch.manual_seed(0)
    tower = QueryTower(config(pooling="mean", normalize=False)).eval()
    with torch.no_grad():  # a non-trivial watch bias, so a missing or doubled bias would show
        tower.watch_proj.bias.add_(1.0)
    watch = WATCH if with_watch else None
    age = AGE if with_age else None
    buckets = BUCKETS if with_age else None
    pooled = explicit_mean_pool(tower, HISTORY, watch, buckets)
    assert torch.allclose(tower._mean_pool(HISTORY, HISTORY > 0, watch, buckets), pooled, atol=1e-6)
    assert torch.equal(pooled[1], torch.zeros(4))  # all-padding row
    # And through forward: out = mlp([pooled, no extras]) + pooled.
    expected = tower.mlp(torch.cat([pooled, torch.zeros_like(pooled)], dim=-1)) + pooled
    assert torch.allclose(tower(HISTORY, watch, age), expected, atol=1e-6)


def test_recency_buckets_are_capped():
    torch.manual_seed(0)
    tower = QueryTower(config(pooling="mean", normalize=False, use_watch_fraction=False)).eval()
    history = torch.tensor([[1, 2]])
    age = torch.tensor([[1e6, 5e6]])  # log2 ~ 20 and 22: both in the last bucket, 16
    pooled = explicit_mean_pool(tower, history, None, torch.tensor([[16, 16]]))
    assert torch.allclose(tower._mean_pool(history, history > 0, None, torch.tensor([[16, 16]])), pooled, atol=1e-6)
    expected = tower.mlp(torch.cat([pooled, torch.zeros_like(pooled)], dim=-1)) + pooled
    assert torch.allclose(tower(history, None, age), expected, atol=1e-6)


def test_mean_pool_gradients_match_explicit_mean():
    torch.manual_seed(0)
    tower = QueryTower(config(pooling="mean", normalize=False)).eval()
    tower._mean_pool(HISTORY, HISTORY > 0, WATCH, BUCKETS).sum().backward()
    fast = {n: p.grad.clone() for n, p in tower.named_parameters() if p.grad is not None}
    tower.zero_grad()
    explicit_mean_pool(tower, HISTORY, WATCH, BUCKETS).sum().backward()
    for name, grad in fast.items():
        assert torch.allclose(grad, tower.get_parameter(name).grad, atol=1e-6), name


@pytest.mark.parametrize("slice_positions", [8192, 4, 1])  # the backward in 1, 3 or 3 slices
def test_weighted_bag_forward_and_gradients_equal_the_explicit_sum(slice_positions, monkeypatch):
    monkeypatch.setattr(two_tower, "BAG_BACKWARD_POSITIONS", slice_positions)
    torch.manual_seed(0)
    table = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    indices = torch.tensor([[0, 2, 2, 5], [1, 1, 1, 1], [0, 0, 0, 0]])  # a repeated row; all padding
    weights = torch.rand(3, 4, dtype=torch.float64) * (indices > 0)
    weights.requires_grad_(True)
    out = weighted_bag(table, indices, weights)
    assert torch.allclose(out, (table[indices] * weights.unsqueeze(-1)).sum(1))
    assert torch.equal(out[2], torch.zeros(3, dtype=torch.float64))
    assert torch.autograd.gradcheck(weighted_bag, (table, indices, weights))
    # Rows only padding points at get no gradient, whatever their weight in the forward.
    weighted_bag(table, indices, weights.detach()).sum().backward()
    assert torch.equal(table.grad[[3, 4]], torch.zeros(2, 3, dtype=torch.float64))
    assert torch.equal(table.grad[0], torch.zeros(3, dtype=torch.float64))


def test_item_text_is_the_mean_of_each_titles_token_embeddings():
    torch.manual_seed(0)
    tower = ItemTower(config(n_genres=0))
    tokens = item_features()["tokens"]
    zeros = torch.zeros(len(tokens))
    text = tower.content(torch.zeros(len(tokens), 0), zeros, zeros, tokens) - tower.year_proj.bias
    reference = torch.nn.EmbeddingBag(9, 4, mode="mean", padding_idx=0)
    reference.weight = tower.text_embedding.weight
    assert torch.allclose(text, reference(tokens), atol=1e-6)
    assert torch.equal(text[2], torch.zeros(4))  # a title without text


def test_towers_train_under_bf16_autocast():
    """Mixed precision (``trainer.precision=bf16-mixed``) runs the bags with fp32 tables."""
    torch.manual_seed(0)
    model = TwoTower(config(), **item_features())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = (model.query({"history": HISTORY, "history_watch": WATCH, "history_age_days": AGE})
                @ model.item_vectors(torch.arange(N_ITEMS)).T).sum()
    loss.backward()
    assert torch.isfinite(model.item_tower.text_embedding.weight.grad).all()
    assert model.query_tower.history_embedding.weight.grad.abs().sum() > 0


# -- member features and request context ------------------------------------------------
def context_config(**overrides) -> TwoTowerConfig:
    return config(user_feature_cardinalities=[3, 4], n_devices=2, use_hour=True, **overrides)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_configured_user_features_device_and_hour_change_the_output(pooling):
    torch.manual_seed(0)
    tower = QueryTower(context_config(pooling=pooling)).eval()
    history = HISTORY[:1]
    base = dict(user_features=torch.tensor([[1, 2]]), device=torch.tensor([1]), hour=torch.tensor([5]))
    out = tower(history, **base)
    for key, other in [("user_features", torch.tensor([[2, 2]])), ("user_features", torch.tensor([[1, 3]])),
                       ("device", torch.tensor([2])), ("hour", torch.tensor([20]))]:
        assert not torch.allclose(tower(history, **{**base, key: other}), out, atol=1e-5), key
    # Leaving them out is allowed (treated as no extra signal).
    assert torch.isfinite(tower(history)).all()


@pytest.mark.parametrize("pooling", POOLINGS)
def test_unconfigured_user_features_device_and_hour_are_ignored(pooling):
    torch.manual_seed(0)
    tower = QueryTower(config(pooling=pooling)).eval()
    history = HISTORY[:1]
    extras = dict(user_features=torch.tensor([[1, 2]]), device=torch.tensor([1]), hour=torch.tensor([5]))
    assert torch.equal(tower(history, **extras), tower(history))


# -- item tower ----------------------------------------------------------------------------
def test_item_vectors_shape_norm_and_finite():
    torch.manual_seed(0)
    model = TwoTower(config(), **item_features()).eval()
    out = model.item_vectors(torch.tensor([0, 3, 4]))
    assert out.shape == (3, 4) and torch.isfinite(out).all()
    assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_items_without_training_interactions_ignore_their_id_embedding():
    torch.manual_seed(0)
    has_id = [True, False, True, False, True]
    model = TwoTower(config(), **item_features(has_id)).eval()
    items = torch.arange(N_ITEMS)
    before = model.item_vectors(items)
    with torch.no_grad():
        model.item_tower.id_embedding.weight.add_(torch.randn(N_ITEMS, 4))
    after = model.item_vectors(items)
    for i, known in enumerate(has_id):
        assert torch.allclose(before[i], after[i], atol=1e-6) != known, i


def test_id_dropout_applies_only_in_training():
    torch.manual_seed(0)
    tower = ItemTower(config(id_dropout=1.0, dropout=0.0))  # dropout 0: training mode is deterministic
    content = torch.randn(3, 4)
    items, has_id = torch.tensor([0, 1, 2]), torch.ones(3, dtype=torch.bool)
    content_only = tower.eval().encode(content, items, torch.zeros(3, dtype=torch.bool))
    with_ids = tower.eval().encode(content, items, has_id)
    assert not torch.allclose(with_ids, content_only, atol=1e-4)
    # Training with id_dropout = 1 hides every id: the content-only vectors.
    assert torch.allclose(tower.train().encode(content, items, has_id), content_only, atol=1e-6)
    # In eval mode, repeated calls are identical (no sampling).
    assert torch.equal(tower.eval().encode(content, items, has_id), with_ids)


def test_id_dropout_hides_some_ids_at_its_rate():
    torch.manual_seed(0)
    tower = ItemTower(config(id_dropout=0.5, dropout=0.0, normalize=False)).train()
    content = torch.zeros(400, 4)
    items = torch.zeros(400, dtype=torch.long)  # same title everywhere: a row is one of two vectors
    out = tower.encode(content, items, torch.ones(400, dtype=torch.bool))
    hidden = torch.isclose(out, tower.encode(content, None, None), atol=1e-6).all(-1)
    assert 0.35 < hidden.float().mean().item() < 0.65


def test_item_tower_without_id_embeddings_uses_content_only():
    torch.manual_seed(0)
    model = TwoTower(config(use_item_ids=False), **item_features()).eval()
    assert model.item_tower.id_embedding is None
    out = model.item_vectors(torch.arange(N_ITEMS))
    assert out.shape == (N_ITEMS, 4) and torch.isfinite(out).all()


# -- TwoTower ------------------------------------------------------------------------------
@pytest.mark.parametrize("was_training", [True, False])
def test_all_item_vectors_equals_item_vectors_in_eval_mode_and_restores_mode(was_training):
    torch.manual_seed(0)
    model = TwoTower(config(id_dropout=0.5), **item_features([True, True, False, True, True]))
    model.train(was_training)
    everything = model.all_item_vectors(batch_size=2)  # 3 chunks: 2 + 2 + 1
    assert model.training == was_training
    assert all(m.training == was_training for m in model.modules())
    assert not everything.requires_grad
    model.eval()
    assert torch.allclose(everything, model.item_vectors(torch.arange(N_ITEMS)), atol=1e-6)


def test_two_tower_defaults_content_buffers_and_query_reads_the_batch():
    torch.manual_seed(0)
    model = TwoTower(context_config(pooling="attention")).eval()
    assert model.tokens.dtype == torch.int32 and model.has_id.all()
    batch = {"history": HISTORY, "history_watch": WATCH, "history_age_days": AGE,
             "user_features": torch.tensor([[1, 0], [0, 0], [2, 3]]), "device": torch.tensor([1, 0, 2]),
             "hour": torch.tensor([1, 0, 24])}
    expected = model.query_tower(HISTORY, WATCH, AGE, batch["user_features"], batch["device"], batch["hour"])
    assert torch.equal(model.query(batch), expected)
    assert model.query({"history": HISTORY}).shape == (3, 4)
    scores = model.query(batch) @ model.all_item_vectors().T
    assert scores.shape == (3, N_ITEMS) and (scores.abs() <= 1 + 1e-5).all()  # cosine scores
    assert model.config.pooling == "attention"


def test_score_is_inner_product_of_unit_vectors():
    torch.manual_seed(0)
    model = TwoTower(config(), **item_features()).eval()
    q = model.query({"history": HISTORY[:1]})
    v = model.item_vectors(torch.tensor([1]))
    assert torch.allclose(q @ v.T, F.cosine_similarity(q, v), atol=1e-6)
