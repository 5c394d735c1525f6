"""Data sources: each turns its own input into :class:`RawData` and names its identity.

A source's ``fingerprint()`` identifies exactly what it reads (its settings plus, for
files, their sizes and modification and status-change times) so processed data can be
cached by it.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Protocol

from streamrec.data.files import load_files
from streamrec.data.movielens import RELEASES, load_movielens
from streamrec.data.schema import DataError, RawData
from streamrec.data.simulator import SimulatorConfig, simulate


class DataSource(Protocol):
    def load(self) -> RawData: ...

    def fingerprint(self) -> dict[str, Any]: ...


def _file_signature(path: Path) -> list[Any]:
    """Path, size, modification time and status-change time: a rewrite that keeps the size
    and sets the old modification time back (``cp -p``, ``rsync -t``, ``touch -r``) still
    moves the status-change time, which no program can set. Changing only the file's
    mode, owner or links moves it too, which costs one unneeded rebuild."""
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


class SimulatorSource:
    """The built-in streaming-service simulator (see :mod:`streamrec.data.simulator`)."""

    def __init__(self, **config: Any):
        self.config = SimulatorConfig(**config)

    def load(self) -> RawData:
        sim = simulate(self.config)
        return RawData(sim.interactions, sim.items, sim.users, name="simulator",
                       origin={t: f"<simulator {t}>" for t in ("interactions", "items", "users")})

    def fingerprint(self) -> dict[str, Any]:
        return {"source": "simulator", **asdict(self.config)}


class MovieLensSource:
    """MovieLens from ``root`` (a folder with the publisher's files) or from GroupLens."""

    def __init__(self, variant: str | None = "ml-100k", root: str | None = None,
                 cache_dir: str = "~/.cache/streamrec", download: bool = True):
        self.variant, self.root, self.cache_dir, self.download = variant, root, cache_dir, download

    def load(self) -> RawData:
        return load_movielens(self.variant, self.root, self.cache_dir, self.download)

    def fingerprint(self) -> dict[str, Any]:
        if self.root is None:
            if self.variant not in RELEASES:
                raise DataError(f"Unknown MovieLens variant {self.variant!r}; choose one of {sorted(RELEASES)}, "
                                "or pass root= a folder with the files.")
            return {"source": "movielens", "variant": self.variant, "md5": RELEASES[self.variant].md5}
        root = Path(self.root).expanduser()
        files = sorted(p for p in root.iterdir() if p.is_file()) if root.is_dir() else []
        return {"source": "movielens", "variant": self.variant, "files": [_file_signature(p) for p in files]}


class FileSource:
    """Generic CSV / TSV / parquet logs; arguments as :func:`streamrec.data.files.load_files`."""

    def __init__(self, interactions: str, columns: Mapping[str, str] | None = None,
                 items: str | None = None, item_columns: Mapping[str, str] | None = None,
                 users: str | None = None, user_columns: Mapping[str, str] | None = None,
                 sep: str | None = None, encoding: str = "utf-8", name: str | None = None):
        self.kwargs = dict(
            interactions=interactions, columns=dict(columns or {}), items=items,
            item_columns=dict(item_columns or {}), users=users, user_columns=dict(user_columns or {}),
            sep=sep, encoding=encoding, name=name,
        )

    def load(self) -> RawData:
        return load_files(**self.kwargs)

    def fingerprint(self) -> dict[str, Any]:
        files = [self.kwargs[k] for k in ("interactions", "items", "users") if self.kwargs[k]]
        signatures = [_file_signature(Path(f).expanduser()) for f in files if Path(f).expanduser().exists()]
        return {"source": "files", **self.kwargs, "files": signatures}
