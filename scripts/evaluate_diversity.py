"""Measure the diversity knob: intra-list diversity gained vs NDCG lost, through the served path.

For every test member of the checkpoint's split, the artifact's ``recommend_batch`` gets
the member's whole seen history (train + validation, with times, watch fractions, device
and member features) and returns 10 titles at each ``diversity`` value; they are scored
against the member's test titles. ILD is reported by genre (as in the evaluation tables)
and by item vector (1 - mean cosine, what MMR acts on).

    python scripts/train.py experiment=ml100k data.root=../shared/datasets/ml-100k
    python scripts/build_index.py
    python scripts/evaluate_diversity.py            # artifact checkpoints/recommender, last run
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from streamrec.cli import build_dataset, markdown_table
from streamrec.evaluation import intra_list_diversity, ndcg_at_k, recall_at_k
from streamrec.inference import ArtifactError, Recommender
from streamrec.training import TwoTowerModule
from streamrec.training.export import resolve_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, default=Path("checkpoints/recommender"))
    parser.add_argument("--checkpoint", default=None, help="default: best checkpoint of the last train.py run")
    parser.add_argument("--diversity", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.5, 0.7])
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()

    try:  # this script's own errors as one line, as the Hydra scripts print them
        checkpoint = resolve_checkpoint(args.checkpoint, "checkpoints", option="--checkpoint ")
        recommender = Recommender.load(args.artifact)
    except (FileNotFoundError, ArtifactError) as error:
        raise SystemExit(str(error)) from None
    if args.k < 2 or args.k > recommender.n_items:
        raise SystemExit(f"--k {args.k}: intra-list diversity needs lists of 2 to {recommender.n_items} titles "
                         "(the catalogue's size).")
    module = TwoTowerModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    data = build_dataset(OmegaConf.create(module.data_spec["data_config"]))
    with torch.inference_mode():
        trained = module.model.all_item_vectors().numpy()
    served = recommender._catalogue.vectors
    if served.shape != trained.shape or not np.allclose(served, trained, atol=1e-4):
        raise SystemExit(f"{args.artifact} does not serve {checkpoint}'s catalogue (its item vectors differ: "
                         "built from another model, or titles were added or removed): run scripts/build_index.py "
                         "checkpoint=... first, or pass the matching --checkpoint.")

    seen = pd.concat([data.train, data.val]).sort_values(["user", "timestamp"] if "timestamp" in data.train else
                                                         ["user"], kind="stable")
    test = data.test.groupby("user")["item"].apply(list)
    users = test.index.to_numpy()
    groups = dict(tuple(seen.groupby("user")))
    raw = data.item_map.raw_ids
    features = data.users.set_index("user_id") if len(data.users.columns) > 1 else None
    histories, times, watch, devices, members = [], [], [], [], []
    for user in users:
        views = groups.get(user, seen.iloc[:0])
        histories.append(raw[views["item"].to_numpy()].tolist())
        times.append(views["timestamp"].tolist() if "timestamp" in views else None)
        watch.append(views["watch_fraction"].tolist() if "watch_fraction" in views else None)
        devices.append(views["device"].iloc[-1] if "device" in views and len(views) else None)
        known = features.loc[data.user_map.to_raw([user])[0]].dropna().to_dict() if features is not None else None
        members.append(known)

    genres, _ = data.genre_matrix()
    genres = torch.from_numpy(genres.toarray())
    vectors = torch.tensor(recommender._catalogue.vectors)  # a copy: the served array is a read-only mapping
    rows = []
    for diversity in args.diversity:
        results = recommender.recommend_batch(histories, k=args.k, timestamps=times, watch_fractions=watch,
                                              devices=devices, member_features=members, diversity=diversity)
        top = torch.tensor([data.item_map.to_index(r.item_ids).tolist() + [-1] * (args.k - len(r)) for r in results])
        hits = torch.tensor([[item in set(test[u]) for item in row.tolist()] for u, row in zip(users, top)])
        n_relevant = torch.tensor([len(test[u]) for u in users])
        v = torch.nn.functional.normalize(vectors[top.clamp(min=0)], dim=-1)
        upper = np.triu_indices(args.k, 1)
        cos = (v @ v.transpose(1, 2))[:, upper[0], upper[1]]
        pairs = ((top >= 0)[:, upper[0]] & (top >= 0)[:, upper[1]]).float()  # padding of short lists left out
        ild_vectors = 1 - (cos * pairs).sum(dim=1) / pairs.sum(dim=1)  # NaN for a list under 2 titles
        rows.append({
            "diversity": diversity,
            f"ndcg@{args.k}": ndcg_at_k(hits, n_relevant, args.k).mean().item(),
            f"recall@{args.k}": recall_at_k(hits, n_relevant, args.k).mean().item(),
            "ILD genres": intra_list_diversity(top, genres).nanmean().item(),
            "ILD vectors": ild_vectors.nanmean().item(),
            "coverage": len(np.unique(top[top >= 0].numpy())) / data.n_items,
        })
    table = pd.DataFrame(rows).set_index("diversity")
    base = table.iloc[0]
    table["ndcg change %"] = 100 * (table[f"ndcg@{args.k}"] / base[f"ndcg@{args.k}"] - 1)
    table["ILD genres change %"] = 100 * (table["ILD genres"] / base["ILD genres"] - 1)
    print(f"\n{data.name}: {len(users)} test members, served by {args.artifact} "
          f"({recommender.manifest['index']['factory']})\n")
    print(markdown_table(table))


if __name__ == "__main__":
    main()
