"""Data layer: sources, the canonical schema, preprocessing, splits and caching."""

from streamrec.data.dataset import SplitData, index_and_split
from streamrec.data.files import load_files
from streamrec.data.movielens import load_movielens
from streamrec.data.pipeline import prepare_dataset
from streamrec.data.preprocessing import Preprocessing, k_core, preprocess
from streamrec.data.schema import DataError, IdMap, RawData, validate_raw
from streamrec.data.simulator import SimulatedData, SimulatorConfig, simulate
from streamrec.data.sources import FileSource, MovieLensSource, SimulatorSource
from streamrec.data.splits import SplitSpec

__all__ = [
    "DataError", "FileSource", "IdMap", "MovieLensSource", "Preprocessing", "RawData",
    "SimulatedData", "SimulatorConfig", "SimulatorSource", "SplitData", "SplitSpec",
    "index_and_split", "k_core", "load_files", "load_movielens", "prepare_dataset",
    "preprocess", "simulate", "validate_raw",
]
