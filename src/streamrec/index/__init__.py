"""FAISS indexes over item vectors: choice by catalogue size, build, search-parameter tuning."""

from streamrec.index.faiss_index import (
    SweepPoint, auto_factory, build_index, exact_search, recall, search_parameter, set_search_parameter, tune,
)

__all__ = ["SweepPoint", "auto_factory", "build_index", "exact_search", "recall", "search_parameter",
           "set_search_parameter", "tune"]
