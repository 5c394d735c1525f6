"""Full-ranking evaluation: top-k accuracy and beyond-accuracy metrics over the whole catalogue.

``evaluate_ranking`` scores every item for batches of members, masks their seen items,
takes a deterministic top-k (score descending, lower item index first on ties) and averages
the metrics of :mod:`streamrec.evaluation.metrics` and
:mod:`streamrec.evaluation.beyond_accuracy` without holding the full score matrix.
"""

from streamrec.evaluation.beyond_accuracy import (
    average_popularity,
    catalogue_coverage,
    exposure_counts,
    gini_index,
    intra_list_diversity,
    item_self_information,
    mean_item_value,
    novelty,
    unit_genre_vectors,
)
from streamrec.evaluation.evaluator import evaluate_ranking, mask_items_, topk_items
from streamrec.evaluation.metrics import (
    average_precision_at_k,
    hit_rate_at_k,
    mrr_at_k,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
)

__all__ = [
    "evaluate_ranking",
    "topk_items",
    "mask_items_",
    "recall_at_k",
    "precision_at_k",
    "ndcg_at_k",
    "hit_rate_at_k",
    "mrr_at_k",
    "average_precision_at_k",
    "exposure_counts",
    "catalogue_coverage",
    "gini_index",
    "mean_item_value",
    "average_popularity",
    "item_self_information",
    "novelty",
    "unit_genre_vectors",
    "intra_list_diversity",
]
