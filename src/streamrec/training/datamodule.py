"""Turning a split dataset into two-tower batches: (member history, context) -> next title.

Training examples are the training interactions. The history of an example is either
``sequential`` — the member's ``max_history`` views before it in time, for splits that
predict the future (leave-last-out, temporal) — or ``set`` — up to ``max_history`` of the
member's *other* training views, a fresh random subset each time, for random splits where
order carries no signal. The example's own title is never in its history.

Evaluation batches give each member their most recent ``max_history`` seen titles, the
titles to mask (everything seen) and the held-out titles, as padded tensors, so the
LightningModule needs nothing but the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from streamrec.data import SplitData
from streamrec.data.features import UserFeatureSpec
from streamrec.data.schema import DEVICE, ITEM, TIMESTAMP, USER, WATCH_FRACTION
from streamrec.models.two_tower import SECONDS_PER_DAY, hour_code
from streamrec.validation import is_whole_number

HISTORY_MODES = ("set", "sequential")


@dataclass
class MemberLog:
    """One part's interactions sorted by (member, time), as flat arrays with segments.

    Member ``u``'s views are rows ``start[u] : start[u] + length[u]``, oldest first.
    """

    item: np.ndarray  # [n] int64
    time: np.ndarray  # [n] float64 unix seconds (0 when unknown)
    watch: np.ndarray  # [n] float32 watch fraction (1 when unknown)
    device: np.ndarray  # [n] int64 device code + 1 (0 when unknown)
    user: np.ndarray  # [n] int64
    start: np.ndarray  # [n_users] int64
    length: np.ndarray  # [n_users] int64

    @classmethod
    def build(cls, frame: pd.DataFrame, n_users: int, device_vocab: list[str]) -> "MemberLog":
        n = len(frame)
        time = frame[TIMESTAMP].to_numpy(np.float64) if TIMESTAMP in frame.columns else np.zeros(n)
        order = np.lexsort((np.arange(n), time, frame[USER].to_numpy()))
        users = frame[USER].to_numpy()[order]
        watch = (frame[WATCH_FRACTION].to_numpy(np.float32) if WATCH_FRACTION in frame.columns
                 else np.ones(n, np.float32))
        if DEVICE in frame.columns:
            codes = {d: i + 1 for i, d in enumerate(device_vocab)}
            device = frame[DEVICE].astype(str).map(codes).fillna(0).to_numpy(np.int64)
        else:
            device = np.zeros(n, np.int64)
        length = np.bincount(users, minlength=n_users).astype(np.int64)
        start = np.concatenate([[0], np.cumsum(length)[:-1]]).astype(np.int64)
        return cls(frame[ITEM].to_numpy(np.int64)[order], time[order], watch[order], device[order], users,
                   start, length)


def _context(time: np.ndarray, device: np.ndarray, known: np.ndarray | bool) -> dict[str, torch.Tensor]:
    """Device code and 1 + hour of day; 0 where unknown (no timestamps, or nothing seen)."""
    hour = np.where(known, hour_code(time), 0).astype(np.int64)
    return {"device": torch.from_numpy(device), "hour": torch.from_numpy(hour)}


class RetrievalDataModule(pl.LightningDataModule):
    """Batches for training (``train``), validation (``val`` vs. train) and test (``test`` vs. train+val).

    Args:
        data: the split dataset.
        batch_size: training examples per step (also the number of in-batch negatives).
        max_history: history positions per example.
        history_mode: ``set`` or ``sequential`` (see the module docstring).
        eval_batch_size: members per evaluation batch.
        seed: seeds the history sampling of ``set`` mode.
    """

    def __init__(self, data: SplitData, batch_size: int = 1024, max_history: int = 50, history_mode: str = "set",
                 eval_batch_size: int = 1024, seed: int = 0):
        super().__init__()
        if history_mode not in HISTORY_MODES:
            raise ValueError(f"history_mode={history_mode!r}: choose one of {HISTORY_MODES}.")
        for name, value, least in (("batch_size", batch_size, 2), ("eval_batch_size", eval_batch_size, 1)):
            if not is_whole_number(value) or value < least:
                raise ValueError(f"{name}={value!r}: expected a whole number >= {least}"
                                 f"{' (in-batch negatives need at least 2)' if least == 2 else ''}.")
        # Plain ints: torch's BatchSampler refuses numpy integers (a sweep may pass them).
        batch_size, eval_batch_size = int(batch_size), int(eval_batch_size)
        self.data = data
        self.batch_size, self.max_history, self.history_mode = batch_size, max_history, history_mode
        self.eval_batch_size = eval_batch_size
        self.rng = np.random.default_rng(seed)
        self.has_time = TIMESTAMP in data.train.columns
        parts = [data.train, data.val, data.test]
        self.device_vocab = sorted({str(d) for p in parts if DEVICE in p.columns for d in p[DEVICE].dropna().unique()})
        self.user_spec = UserFeatureSpec.fit(data.users)
        self.user_codes = self.user_spec.encode(data.users)
        self.train_log = MemberLog.build(data.train, data.n_users, self.device_vocab)
        seen_val = pd.concat([data.train, data.val], ignore_index=True)
        self.eval_logs = {"val": self.train_log, "test": MemberLog.build(seen_val, data.n_users, self.device_vocab)}
        self.targets = {"val": MemberLog.build(data.val, data.n_users, self.device_vocab),
                        "test": MemberLog.build(data.test, data.n_users, self.device_vocab)}
        # "set" mode: each member's views in a fixed random order; a history is a window of it.
        log = self.train_log
        keys = self.rng.random(len(log.item))
        self._shuffled = np.lexsort((keys, log.user))
        self._rank = np.empty_like(self._shuffled)
        self._rank[self._shuffled] = np.arange(len(self._shuffled)) - log.start[log.user[self._shuffled]]

    # -- what the model needs to know about the data ---------------------------------
    @property
    def n_devices(self) -> int:
        return len(self.device_vocab)

    def item_probability(self) -> torch.Tensor:
        """[n_items] share of training examples whose positive is each title (for logQ)."""
        counts = np.bincount(self.train_log.item, minlength=self.data.n_items).astype(np.float64)
        return torch.from_numpy(counts / counts.sum()).float()

    # -- training batches ---------------------------------------------------------------
    def train_batch(self, examples: list[int] | np.ndarray) -> dict[str, torch.Tensor]:
        """Batch for training example rows ``examples`` of the sorted training log."""
        log = self.train_log
        pos = np.asarray(examples, dtype=np.int64)
        users = log.user[pos]
        latest = log.start[users] + log.length[users] - 1  # each member's latest training view
        steps = np.arange(self.max_history)
        if self.history_mode == "sequential":
            hist = pos[:, None] - self.max_history + steps[None, :]
            valid = hist >= log.start[users][:, None]
            ref_time = log.time[pos]
        else:
            n = log.length[users]
            others = np.maximum(n - 1, 1)
            offset = (self.rng.random(len(pos)) * others).astype(np.int64)
            ranks = (self._rank[pos][:, None] + 1 + (offset[:, None] + steps[None, :]) % others[:, None]) % n[:, None]
            valid = steps[None, :] < (n - 1)[:, None]
            hist = self._shuffled[log.start[users][:, None] + ranks]
            # Padding first, then oldest to newest: the same layout as sequential mode.
            order = np.argsort(np.where(valid, log.time[hist], -np.inf), axis=1, kind="stable")
            hist = np.take_along_axis(hist, order, axis=1)
            valid = np.take_along_axis(valid, order, axis=1)
            ref_time = log.time[latest]
        hist = np.where(valid, hist, 0)
        batch = self._history_tensors(log, hist, valid, ref_time)
        # Context is the request's: the target view's own in sequential mode; in set mode the
        # target has no "moment", so it is the member's latest view, exactly as at evaluation.
        context_row = pos if self.history_mode == "sequential" else latest
        batch.update(_context(log.time[context_row], log.device[context_row], self.has_time))
        batch["user_features"] = self.user_codes[users]
        batch["target"] = torch.from_numpy(log.item[pos])
        batch["user"] = torch.from_numpy(users)
        return batch

    def _history_tensors(self, log: MemberLog, hist: np.ndarray, valid: np.ndarray,
                         ref_time: np.ndarray) -> dict[str, torch.Tensor]:
        age = np.where(valid, (ref_time[:, None] - log.time[hist]) / SECONDS_PER_DAY, 0.0)
        return {
            "history": torch.from_numpy(np.where(valid, log.item[hist] + 1, 0)),
            "history_watch": torch.from_numpy(np.where(valid, log.watch[hist], 0.0).astype(np.float32)),
            "history_age_days": torch.from_numpy(np.maximum(age, 0.0).astype(np.float32)),
        }

    # -- evaluation batches -----------------------------------------------------------
    def eval_users(self, part: str) -> np.ndarray:
        """Members with at least one held-out title in ``part`` (``val`` or ``test``)."""
        return np.flatnonzero(self.targets[part].length > 0)

    def eval_batch(self, users: list[int] | np.ndarray, part: str,
                   with_targets: bool = True) -> dict[str, torch.Tensor]:
        """History / context of ``users`` as of the end of what they had seen before ``part``.

        With ``with_targets``, adds ``exclude`` (seen titles) and ``targets`` (held-out
        titles) as [B, *] item-index tensors padded with -1.
        """
        log = self.eval_logs[part]
        users = np.asarray(users, dtype=np.int64)
        end = log.start[users] + log.length[users]
        hist = end[:, None] - self.max_history + np.arange(self.max_history)[None, :]
        valid = hist >= log.start[users][:, None]
        hist = np.where(valid, hist, 0)
        # The request's moment: in sequential mode, as in training, the held-out view's own
        # time and device (serving knows when and where a member asks); otherwise, and for
        # members with nothing held out, the member's latest seen view.
        has_any = log.length[users] > 0
        last = np.where(has_any, end - 1, 0)
        ref_time = np.where(has_any, log.time[last] if len(log.item) else 0.0, 0.0)
        ref_device = np.where(has_any, log.device[last] if len(log.item) else 0, 0)
        target_log = self.targets[part]
        if self.history_mode == "sequential" and len(target_log.item):
            held = target_log.length[users] > 0
            first = np.where(held, target_log.start[users], 0)
            ref_time = np.where(held, target_log.time[first], ref_time)
            ref_device = np.where(held, target_log.device[first], ref_device)
            has_any = has_any | held
        batch = self._history_tensors(log, hist, valid, ref_time)
        batch.update(_context(ref_time, ref_device, has_any & self.has_time))
        batch["user_features"] = self.user_codes[users]
        batch["user"] = torch.from_numpy(users)
        if with_targets:
            batch["exclude"] = _padded(log, users)
            batch["targets"] = _padded(self.targets[part], users)
        return batch

    # -- Lightning hooks -----------------------------------------------------------------
    def state_dict(self) -> dict:
        """Saved in checkpoints: the generator that draws history windows, so a resumed run
        draws what the uninterrupted one would."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state_dict: dict) -> None:
        if "rng" in state_dict:
            self.rng.bit_generator.state = state_dict["rng"]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(range(len(self.train_log.item)), batch_size=self.batch_size, shuffle=True,
                          collate_fn=self.train_batch, drop_last=len(self.train_log.item) > self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.eval_users("val").tolist(), batch_size=self.eval_batch_size,
                          collate_fn=lambda users: self.eval_batch(users, "val"))


def _padded(log: MemberLog, users: np.ndarray) -> torch.Tensor:
    lengths = log.length[users]
    width = max(int(lengths.max(initial=0)), 1)
    steps = np.arange(width)
    idx = log.start[users][:, None] + steps[None, :]
    valid = steps[None, :] < lengths[:, None]
    items = np.where(valid, log.item[np.where(valid, idx, 0)] if len(log.item) else 0, -1)
    return torch.from_numpy(items.astype(np.int64))
