"""The scripts' error reporting: streamrec's own input errors as their message alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from streamrec.cli import UsageError, markdown_table, usage_errors
from streamrec.inference.artifact import write_artifact
from streamrec.inference.row_lookup import RowLookup
from streamrec.training.export import resolve_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_errors_streamrec_raises_become_usage_errors_and_others_pass_through(tmp_path):
    with pytest.raises(UsageError, match=r"^FileNotFoundError: checkpoint=.*nothing\.ckpt: no such file\.$") as caught:
        with usage_errors():
            resolve_checkpoint(str(tmp_path / "nothing.ckpt"), tmp_path)
    assert isinstance(caught.value.__cause__, FileNotFoundError)  # HYDRA_FULL_ERROR=1 still shows where
    with pytest.raises(ValueError, match="cannot reshape") as caught:  # numpy's, not a setting: traceback kept
        with usage_errors():
            np.zeros(2).reshape(3)
    assert not isinstance(caught.value, UsageError)
    with pytest.raises(FileNotFoundError):
        with usage_errors():
            (tmp_path / "missing.txt").read_text()
    with pytest.raises(ValueError, match="shape mismatch") as caught:  # numpy's, called inside streamrec
        with usage_errors():
            RowLookup.of([1, 2], [0, 1, 2])
    assert not isinstance(caught.value, UsageError)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match=r"^FileExistsError: .*notes exists and is not a streamrec artifact"):
        with usage_errors():
            write_artifact(tmp_path / "notes", lambda directory: {}, overwrite=True)
    # Refused by a streamrec class while Hydra builds it: Hydra's multi-line wrapper named only "model".
    from hydra.utils import instantiate
    with pytest.raises(UsageError, match=r"^ValueError: n_items=5, dim=8, max_history=0: each must be >= 1 .*"
                                         r"\(building model\)$"):
        with usage_errors():
            instantiate({"model": {"_target_": "streamrec.models.two_tower.TwoTowerConfig", "n_items": 5, "dim": 8,
                                   "max_history": 0}}).model
    with pytest.raises(Exception) as caught:  # a library's error inside instantiate keeps its form
        with usage_errors():
            instantiate({"_target_": "numpy.zeros", "shape": -1})
    assert not isinstance(caught.value, UsageError)


def test_a_bad_setting_stops_train_py_with_its_message_and_no_traceback(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "trainer.max_epochs=0",
                           f"paths.root_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "ValueError: trainer.max_epochs=0: train at least one epoch" in done.stderr
    assert "Traceback" not in done.stderr and "HYDRA_FULL_ERROR=1" in done.stderr


def test_evaluate_diversity_without_a_run_says_what_to_do_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate_diversity.py")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "run `python scripts/train.py` first, or pass --checkpoint path/to/model.ckpt" in done.stderr


def test_markdown_tables_leave_missing_values_blank():
    table = markdown_table(pd.DataFrame({"recall": [0.25, float("nan")], "model": ["EASE", "new"]}), ".2f")
    assert table.splitlines()[2:] == ["| 0 | 0.25 | EASE |", "| 1 |  | new |"]
