"""The serving artifact: one self-describing directory, written atomically, verified on load.

Layout (every file listed with its sha256 in ``manifest.json``)::

    manifest.json        format version, library versions, model constructor arguments,
                         dimension, metric, normalisation, index factory and search
                         parameter, measured recall, feature vocabularies, checksums
    query_tower.pt       query-tower state dict (torch.load(weights_only=True))
    item_tower.pt        item-tower content path (embeds new titles; no id embedding)
    item_vectors.npy     [n_items, d] float32, row i = FAISS id i
    index.faiss          the FAISS index (inner product)
    items.parquet        row i: item_id (the id map), metadata, training popularity
    recall_latency.png   recall@k vs latency over the search-parameter sweep

Nothing here unpickles code: JSON, numpy ``.npy`` without pickle, parquet, FAISS's own
format and ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

FORMAT_NAME = "streamrec-retrieval"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class ArtifactError(RuntimeError):
    """A missing, corrupted or incompatible artifact file (the message names the file)."""


def sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_artifact(path: str | Path, write_files: Callable[[Path], dict[str, Any]],
                   overwrite: bool = True) -> dict[str, Any]:
    """Create the artifact directory ``path`` atomically.

    ``write_files(tmp)`` writes every file into the temporary directory ``tmp`` and returns
    the manifest (without ``files``); checksums are added here. The directory appears under
    ``path`` only when complete: a failed build leaves any previous artifact untouched.
    An existing ``path`` is replaced only if it is an artifact (or an empty directory).
    Returns the manifest as written.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.")
    if path.exists() and not (path.is_dir() and ((path / MANIFEST).is_file() or not any(path.iterdir()))):
        # Only a previous artifact (or an empty directory) is replaced, never other files.
        raise FileExistsError(f"{path} exists and is not a streamrec artifact (no {MANIFEST}); it was left as it "
                              "is. Write the artifact to another path, or remove this one first.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    except OSError as error:
        raise OSError(f"{path}: cannot write an artifact in {path.parent} ({error.strerror or error}); "
                      "choose a writable directory.") from None
    try:
        manifest = write_files(tmp)
        files = sorted(p.name for p in tmp.iterdir() if p.name != MANIFEST)
        manifest = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **manifest,
                    "files": {name: sha256(tmp / name) for name in files}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False))
        _fsync_dir(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the services reading it may be other users
        if path.exists():
            # Swap: the old bundle is moved aside first, so `path` is never half written
            # (a reader may find no bundle for an instant, never a mixed one).
            old = path.with_name(f".{path.name}.{os.getpid()}.{time.time_ns()}.old")
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)  # put the previous bundle back
                raise
            if old.is_symlink():
                old.unlink()
            else:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_directory(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def read_manifest(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """The manifest of artifact ``path``, after checking format and (``verify``) checksums."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"{path}: no artifact directory here. Build one with `python scripts/build_index.py`.")
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{manifest_path}: missing; the directory is not a streamrec artifact.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{manifest_path}: corrupted ({error}); rebuild the artifact.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ArtifactError(f"{manifest_path}: format {found!r} is not {FORMAT_NAME!r}.")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{manifest_path}: format version {version} but this streamrec reads version {FORMAT_VERSION}; "
            "rebuild the artifact with this version's `scripts/build_index.py` or install the matching streamrec."
        )
    if verify:
        files = manifest.get("files")
        if not files or not isinstance(files, dict):
            raise ArtifactError(f"{manifest_path}: lists no files and checksums; rebuild the artifact.")
        for name in files:
            if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
                raise ArtifactError(f"{manifest_path}: file name {name!r} is not a plain name inside the artifact.")
        for name in files:
            if not (path / name).is_file():
                raise ArtifactError(f"{path / name}: missing from the artifact (listed in {MANIFEST}).")
        # hashlib releases the GIL on large buffers: the big files hash in parallel.
        with ThreadPoolExecutor(max_workers=min(4, len(files) or 1)) as pool:
            actual = dict(zip(files, pool.map(lambda name: sha256(path / name), files)))
        for name, expected in files.items():
            if actual[name] != expected:
                raise ArtifactError(f"{path / name}: checksum mismatch (sha256 {actual[name][:12]}…, manifest says "
                                    f"{expected[:12]}…): the file was changed or corrupted; rebuild the artifact.")
    return manifest


def _fsync_dir(directory: Path) -> None:
    for file in directory.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    """Make renames inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
