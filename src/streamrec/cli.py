"""Helpers for the Hydra entry points in ``scripts/``: the only place configs become objects.

Library classes take plain typed arguments; this module turns the ``data`` config group
into a :class:`~streamrec.data.SplitData` and formats result tables for the terminal.
"""

from __future__ import annotations

import logging

import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig

from streamrec.data import SplitData, prepare_dataset

log = logging.getLogger(__name__)


def build_dataset(cfg: DictConfig) -> SplitData:
    """Instantiate a ``data`` config group (source, preprocessing, split, cache_dir)."""
    return prepare_dataset(
        source=instantiate(cfg.source, _convert_="all"),
        preprocessing=instantiate(cfg.preprocessing, _convert_="all"),
        split=instantiate(cfg.split, _convert_="all"),
        cache_dir=cfg.get("cache_dir"),
    )


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".4f") -> str:
    """A GitHub-markdown table of ``frame`` (index included)."""
    frame = frame.reset_index()
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    lines = [header, rule]
    for row in frame.itertuples(index=False):
        cells = [format(v, floatfmt) if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
