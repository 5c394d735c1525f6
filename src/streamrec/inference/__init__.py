"""Serving: load an artifact directory and recommend. Imports torch, numpy, scipy, pandas
and FAISS only (never Lightning, Hydra or wandb), so other services can import it cheaply.

    from streamrec.inference import Recommender
    recommender = Recommender.load("checkpoints/recommender")
    for rec in recommender.recommend([50, 172, 181], k=5):
        print(rec.item_id, rec.title, round(rec.score, 3))
"""

from streamrec.inference.artifact import ArtifactError, read_manifest
from streamrec.inference.export import export_artifact
from streamrec.inference.recommender import Recommendation, Recommendations, Recommender, UnknownItemsError

__all__ = ["ArtifactError", "Recommendation", "Recommendations", "Recommender", "UnknownItemsError",
           "export_artifact", "read_manifest"]
