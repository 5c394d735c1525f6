"""Helpers for the Hydra entry points in ``scripts/``: the only place configs become objects.

Library classes take plain typed arguments; this module turns the ``data`` config group
into a :class:`~streamrec.data.SplitData`, formats result tables for the terminal, and
shows streamrec's own input errors as their message (:func:`usage_errors`).
"""

from __future__ import annotations

import dis
import logging
import math
import re
from contextlib import contextmanager
from typing import Iterator

import pandas as pd
from hydra.errors import CompactHydraException, InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from streamrec.data import SplitData, prepare_dataset
from streamrec.inference.artifact import ArtifactError

log = logging.getLogger(__name__)

_RAISE = dis.opmap["RAISE_VARARGS"]


class UsageError(CompactHydraException):
    """A setting or input the user must fix; Hydra prints its message without a traceback."""


@contextmanager
def usage_errors() -> Iterator[None]:
    """Run a script's work so that the errors streamrec raises on purpose about bad settings
    or input (a ``ValueError`` such as ``DataError``, an ``ArtifactError``, an ``OSError``
    such as ``FileNotFoundError``; each names the setting and the fix) end the script with
    that message alone and exit status 1. Errors raised anywhere else keep Hydra's
    traceback, including those of numpy or builtins called from streamrec (a bug, not a
    setting); ``HYDRA_FULL_ERROR=1`` shows it for all.
    """
    try:
        yield
    except (ValueError, ArtifactError, OSError) as error:
        if not _raised_on_purpose(error):
            raise
        raise UsageError(f"{type(error).__name__}: {error}") from error  # Hydra adds the hint
    except InstantiationException as error:  # a streamrec class refused its settings while Hydra built it
        cause = error.__cause__
        if not isinstance(cause, (ValueError, ArtifactError, OSError)) or not _raised_on_purpose(cause):
            raise
        key = re.search(r"full_key: (\S+)", str(error))
        where = f" (building {key.group(1)})" if key else ""
        raise UsageError(f"{type(cause).__name__}: {cause}{where}") from error


def _raised_on_purpose(error: BaseException) -> bool:
    """Whether ``error`` came from a ``raise`` statement in streamrec's own code: its
    innermost frame is streamrec's and stopped at a raise, not inside a call (functions
    written in C, numpy's or ``range()``, add no frame of their own)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None or not tb.tb_frame.f_globals.get("__name__", "").startswith("streamrec."):
        return False
    return tb.tb_frame.f_code.co_code[tb.tb_lasti] == _RAISE


def build_dataset(cfg: DictConfig) -> SplitData:
    """Instantiate a ``data`` config group (source, preprocessing, split, cache_dir)."""
    return prepare_dataset(
        source=instantiate(cfg.source, _convert_="all"),
        preprocessing=instantiate(cfg.preprocessing, _convert_="all"),
        split=instantiate(cfg.split, _convert_="all"),
        cache_dir=cfg.get("cache_dir"),
    )


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".4f") -> str:
    """A GitHub-markdown table of ``frame`` (index included; missing values blank)."""
    frame = frame.reset_index()
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    lines = [header, rule]
    for row in frame.itertuples(index=False):
        cells = [("" if math.isnan(v) else format(v, floatfmt)) if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
