"""Source -> validation -> preprocessing -> ids -> split, cached as parquet by config."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

from streamrec.data.dataset import FORMAT_VERSION, SplitData, index_and_split
from streamrec.data.preprocessing import Preprocessing, preprocess
from streamrec.data.schema import validate_raw
from streamrec.data.sources import DataSource
from streamrec.data.splits import SplitSpec

log = logging.getLogger(__name__)


def cache_key(source: DataSource, preprocessing: Preprocessing, split: SplitSpec) -> str:
    """A short hash of everything that determines the processed data."""
    payload = {
        "format_version": FORMAT_VERSION,
        "source": source.fingerprint(),
        "preprocessing": asdict(preprocessing),
        "split": asdict(split),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare_dataset(
    source: DataSource,
    preprocessing: Preprocessing | None = None,
    split: SplitSpec | None = None,
    cache_dir: str | Path | None = None,
) -> SplitData:
    """Load, validate, preprocess, index and split; reuse the cached result when it exists.

    Args:
        source: where the data comes from (simulator, MovieLens, files).
        preprocessing: thresholds, duplicates, k-core (default: keep everything).
        split: how to split (default: per-member random 80/10/10, seed 42).
        cache_dir: folder for processed data, keyed by a hash of the three above; None
            disables caching.
    """
    preprocessing = preprocessing or Preprocessing()
    split = split or SplitSpec()
    target = None
    if cache_dir is not None:
        key = cache_key(source, preprocessing, split)
        target = Path(cache_dir).expanduser() / "processed" / key
        if (target / "meta.json").exists():
            log.info("loading processed data from cache %s", target)
            return SplitData.load(target)
    raw = validate_raw(source.load())
    raw, report = preprocess(raw, preprocessing)
    data = index_and_split(raw, split, report)
    log.info("%s: %s", data.name, data.summary())
    if target is not None:
        data.save(target, replace=False)  # same key, same data: a copy another process wrote stays
        log.info("cached processed data in %s", target)
    return data
