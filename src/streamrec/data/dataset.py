"""The indexed, split dataset every model and metric works on.

Raw ids are mapped to contiguous indices (``user`` in ``0..n_users-1``, ``item`` in
``0..n_items-1``) by :class:`IdMap` s that are saved with the data and with every model.
The catalogue is every title in the items table that survived preprocessing, watched or
not, so titles nobody has seen yet are still candidates.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from streamrec.data.schema import ITEM, ITEM_ID, USER, USER_ID, IdMap, RawData
from streamrec.data.splits import TEST, TRAIN, VAL, SplitSpec, assign_parts

PARTS = ("train", "val", "test")
FORMAT_VERSION = 4  # 2: whole-number float ids as integers, sub-second time order; 3: one id type per column;
# 4: ids, titles and descriptions in text files read verbatim (a title id "NA" is not missing)


@dataclass
class SplitData:
    """Train / validation / test interactions over one catalogue and one member base.

    ``train``, ``val`` and ``test`` have columns ``user``, ``item`` (int64 indices) plus
    whatever optional columns the source had (``timestamp``, ``rating``,
    ``watch_fraction``, ``device``); ``val`` may be empty. Row ``i`` of ``items`` describes
    item index ``i`` (``item_id`` is its raw id); row ``u`` of ``users`` describes member ``u``.
    """

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    user_map: IdMap
    item_map: IdMap
    name: str = "data"
    report: dict[str, int] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.user_map)

    @property
    def n_items(self) -> int:
        return len(self.item_map)

    def part(self, name: str) -> pd.DataFrame:
        if name not in PARTS:
            raise ValueError(f"unknown part {name!r}; choose from {PARTS}.")
        return getattr(self, name)

    def matrix(self, parts: str | Iterable[str] = "train") -> sp.csr_matrix:
        """Binary member x title matrix [n_users, n_items] (float32) of the given parts."""
        names = [parts] if isinstance(parts, str) else list(parts)
        frames = [self.part(p) for p in names]
        users = np.concatenate([f[USER].to_numpy() for f in frames])
        items = np.concatenate([f[ITEM].to_numpy() for f in frames])
        matrix = sp.csr_matrix(
            (np.ones(len(users), dtype=np.float32), (users, items)), shape=(self.n_users, self.n_items)
        )
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        return matrix

    def item_popularity(self) -> np.ndarray:
        """Training interactions per title, [n_items] int64."""
        return np.bincount(self.train[ITEM].to_numpy(), minlength=self.n_items).astype(np.int64)

    def cold_items(self) -> np.ndarray:
        """Titles with held-out interactions but none in train or validation, sorted."""
        seen = np.union1d(self.train[ITEM].to_numpy(), self.val[ITEM].to_numpy())
        return np.setdiff1d(self.test[ITEM].to_numpy(), seen)

    def genre_matrix(self) -> tuple[sp.csr_matrix, list[str]]:
        """Multi-hot genres [n_items, n_genres] (float32) and the genre names; empty if none."""
        if "genres" not in self.items.columns:
            return sp.csr_matrix((self.n_items, 0), dtype=np.float32), []
        lists = self.items["genres"].tolist()
        vocab = sorted({g for genres in lists for g in genres})
        column = {g: j for j, g in enumerate(vocab)}
        rows = np.repeat(np.arange(len(lists)), [len(g) for g in lists])
        cols = np.array([column[g] for genres in lists for g in genres], dtype=np.int64)
        matrix = sp.csr_matrix(
            (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(self.n_items, len(vocab))
        )
        return matrix, vocab

    def summary(self) -> dict[str, int | float]:
        n = sum(len(self.part(p)) for p in PARTS)
        return {
            "users": self.n_users,
            "items": self.n_items,
            "interactions": n,
            "train": len(self.train),
            "val": len(self.val),
            "test": len(self.test),
            "density": n / max(1, self.n_users * self.n_items),
        }

    def save(self, directory: str | Path, replace: bool = True) -> None:
        """Write to ``directory`` atomically (a temporary folder renamed into place).

        ``replace=False`` (a cache): a complete copy already there, e.g. written by another
        process meanwhile, is kept and this one dropped.
        """
        directory = Path(directory)
        if not replace and (directory / "meta.json").exists():
            return
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
        try:
            for name in PARTS:
                self.part(name).to_parquet(tmp / f"{name}.parquet", index=False)
            self.items.to_parquet(tmp / "items.parquet", index=False)
            self.users.to_parquet(tmp / "users.parquet", index=False)
            self.user_map.save(tmp / "user_map.json")
            self.item_map.save(tmp / "item_map.json")
            meta = {"format_version": FORMAT_VERSION, "name": self.name, "report": self.report}
            (tmp / "meta.json").write_text(json.dumps(meta))
            if directory.exists() and (replace or not (directory / "meta.json").exists()):
                shutil.rmtree(directory, ignore_errors=True)  # replace=False: only a broken leftover
            try:
                tmp.rename(directory)
            except OSError:
                if replace or not (directory / "meta.json").exists():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another process's copy landed first: keep it
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(cls, directory: str | Path) -> "SplitData":
        directory = Path(directory)
        meta = json.loads((directory / "meta.json").read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{directory}: cached data format {meta.get('format_version')} != {FORMAT_VERSION}.")
        parts = {name: pd.read_parquet(directory / f"{name}.parquet") for name in PARTS}
        items = pd.read_parquet(directory / "items.parquet")
        if "genres" in items.columns:
            items["genres"] = items["genres"].map(list)
        return cls(
            **parts,
            items=items,
            users=pd.read_parquet(directory / "users.parquet"),
            user_map=IdMap.load(directory / "user_map.json"),
            item_map=IdMap.load(directory / "item_map.json"),
            name=meta["name"],
            report=meta["report"],
        )


def index_and_split(data: RawData, spec: SplitSpec, report: dict[str, int] | None = None) -> SplitData:
    """Map raw ids of preprocessed ``data`` to indices and split it by ``spec``."""
    inter = data.interactions
    user_ids = np.sort(inter[USER_ID].unique())
    user_map = IdMap(user_ids)
    if data.items is not None:
        items = data.items.sort_values(ITEM_ID, kind="stable").reset_index(drop=True)
    else:
        items = pd.DataFrame({ITEM_ID: np.sort(inter[ITEM_ID].unique())})
    item_map = IdMap(items[ITEM_ID].to_numpy())

    indexed = inter.drop(columns=[USER_ID, ITEM_ID])
    indexed.insert(0, ITEM, item_map.to_index(inter[ITEM_ID]))
    indexed.insert(0, USER, user_map.to_index(inter[USER_ID]))
    indexed = indexed.reset_index(drop=True)

    if data.users is not None:
        users = pd.DataFrame({USER_ID: user_ids}).merge(data.users, on=USER_ID, how="left")
    else:
        users = pd.DataFrame({USER_ID: user_ids})

    parts = assign_parts(indexed, spec)
    frames = {name: indexed[parts == code].reset_index(drop=True) for name, code in zip(PARTS, (TRAIN, VAL, TEST))}
    return SplitData(
        **frames, items=items, users=users, user_map=user_map, item_map=item_map,
        name=data.name, report=dict(report or {}),
    )
