"""MovieLens in the publishers' own layouts, from a local folder or downloaded from GroupLens.

Layouts:
    ml-100k                       ``u.data`` (tab), ``u.item`` / ``u.user`` (pipe, latin-1)
    ml-1m, ml-10m                 ``ratings.dat``, ``movies.dat``, ``users.dat`` (``::``)
    ml-20m, ml-25m, ml-32m,
    ml-latest-small, ml-latest    ``ratings.csv``, ``movies.csv`` (comma, with header)

With ``root`` the files are read from that folder and nothing is downloaded. Without it,
the archive is fetched from GroupLens into ``cache_dir``, its MD5 checked against the
published one, and unpacked; later calls reuse the unpacked folder.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from streamrec.data.schema import ITEM_ID, USER_ID, DataError, RawData

log = logging.getLogger(__name__)

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens"
# Only an empty field is missing: a title such as "NA" or "None" is read as it is written
# (the published files leave unknown values empty).
_ONLY_EMPTY_IS_MISSING = {"keep_default_na": False, "na_values": [""]}


@dataclass(frozen=True)
class _Release:
    archive: str  # zip file name on GroupLens
    folder: str  # top-level folder inside the zip
    md5: str | None  # published MD5; None = fetch the published .md5 beside the zip
    layout: str  # "100k", "dat" or "csv"


RELEASES: dict[str, _Release] = {
    "ml-100k": _Release("ml-100k.zip", "ml-100k", "0e33842e24a9c977be4e0107933c0723", "100k"),
    "ml-1m": _Release("ml-1m.zip", "ml-1m", "c4d9eecfca2ab87c1945afe126590906", "dat"),
    "ml-10m": _Release("ml-10m.zip", "ml-10M100K", "ce571fd55effeba0271552578f2648bd", "dat"),
    "ml-20m": _Release("ml-20m.zip", "ml-20m", "cd245b17a1ae2cc31bb14903e1204af3", "csv"),
    "ml-25m": _Release("ml-25m.zip", "ml-25m", "6b51fb2759a8657d3bfcbfc42b592ada", "csv"),
    "ml-32m": _Release("ml-32m.zip", "ml-32m", "d472be332d4daa821edc399621853b57", "csv"),
    # The "latest" releases are rebuilt from time to time: their checksum is read from
    # the .md5 file GroupLens publishes beside the archive.
    "ml-latest-small": _Release("ml-latest-small.zip", "ml-latest-small", None, "csv"),
    "ml-latest": _Release("ml-latest.zip", "ml-latest", None, "csv"),
}

ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
]

_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")


def detect_layout(root: Path) -> str:
    """Which publisher layout the folder holds: "100k", "dat" or "csv"."""
    if (root / "u.data").exists():
        return "100k"
    if (root / "ratings.dat").exists():
        return "dat"
    if (root / "ratings.csv").exists():
        return "csv"
    raise DataError(
        f"{root}: no MovieLens ratings file found (looked for u.data, ratings.dat, "
        "ratings.csv). Unzip a GroupLens MovieLens archive there, e.g. ml-100k.zip "
        "so that u.data, u.item and u.user sit directly in that folder."
    )


def load_movielens(
    variant: str | None = "ml-100k",
    root: str | Path | None = None,
    cache_dir: str | Path = "~/.cache/streamrec",
    download: bool = True,
) -> RawData:
    """Load a MovieLens release into the canonical :class:`RawData` form.

    Args:
        variant: release to download (see ``RELEASES``); ignored with ``root``, where the
            layout is detected from the files present.
        root: a folder holding the publisher's files; skips the download entirely.
        cache_dir: where downloads are kept (``<cache_dir>/movielens/<variant>``).
        download: allow fetching from GroupLens when the files are not cached.
    """
    if root is not None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DataError(
                f"MovieLens root {root} is not a folder. Pass the folder that holds the "
                "unzipped files (e.g. data.root=/path/to/ml-100k)."
            )
        name = root.name
    else:
        if variant not in RELEASES:
            raise DataError(
                f"Unknown MovieLens variant {variant!r}; choose one of {sorted(RELEASES)}, "
                "or pass root= a folder with the files."
            )
        root = fetch_movielens(variant, cache_dir, download)
        name = variant
    layout = detect_layout(root)
    reader = {"100k": _read_100k, "dat": _read_dat, "csv": _read_csv}[layout]
    data = reader(root)
    data.name = name
    return data


def fetch_movielens(variant: str, cache_dir: str | Path, download: bool = True) -> Path:
    """Return the unpacked release folder under ``cache_dir``, downloading it if needed."""
    release = RELEASES[variant]
    target = Path(cache_dir).expanduser() / "movielens" / variant
    if target.is_dir():
        return target
    url = f"{GROUPLENS_URL}/{release.archive}"
    how_to_fix = (
        f"Download {url} on a machine with network, unzip it, and either pass "
        f"data.root=/path/to/{release.folder} or put its files in {target}."
    )
    if not download:
        raise DataError(f"MovieLens {variant} is not in {target} and downloads are off. {how_to_fix}")
    log.info("downloading %s", url)
    try:
        payload = _http_get(url)
        expected = release.md5 or _http_get(url + ".md5").decode().split()[0]
    except (urllib.error.URLError, OSError) as err:
        raise DataError(f"Could not download MovieLens {variant} from {url} ({err}). {how_to_fix}") from err
    actual = hashlib.md5(payload).hexdigest()
    if actual != expected:
        raise DataError(
            f"{url}: checksum mismatch (md5 {actual}, published {expected}); the download "
            f"is corrupt or the release changed. Retry, or {how_to_fix}"
        )
    unpack_release(payload, release.folder, target)
    return target


def unpack_release(payload: bytes, folder: str, target: Path) -> None:
    """Unzip ``folder`` from the archive bytes into ``target`` atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        with zipfile.ZipFile(io.BytesIO(payload)) as archive:
            archive.extractall(tmp)
        extracted = Path(tmp) / folder
        if not extracted.is_dir():
            raise DataError(f"The archive has no folder {folder!r}; it is not the expected release.")
        extracted.rename(target)


def _http_get(url: str, timeout: float = 60.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _year_from_title(titles: pd.Series) -> pd.Series:
    return pd.to_numeric(titles.str.extract(_YEAR_IN_TITLE, expand=False), errors="coerce").astype("Int64")


def _require(root: Path, *names: str) -> None:
    missing = [n for n in names if not (root / n).exists()]
    if missing:
        raise DataError(f"{root}: missing {missing}. Unzip the complete GroupLens archive into that folder.")


def _read_100k(root: Path) -> RawData:
    _require(root, "u.data", "u.item")
    ratings = pd.read_csv(
        root / "u.data", sep="\t", header=None,
        names=[USER_ID, ITEM_ID, "rating", "timestamp"], **_ONLY_EMPTY_IS_MISSING,
    )
    item_cols = [ITEM_ID, "title", "release_date", "video_release_date", "imdb_url", *ML100K_GENRES]
    items = pd.read_csv(root / "u.item", sep="|", header=None, names=item_cols, encoding="latin-1",
                        **_ONLY_EMPTY_IS_MISSING)
    flags = items[ML100K_GENRES].to_numpy(dtype=bool)
    names = np.asarray(ML100K_GENRES, dtype=object)
    items = pd.DataFrame({
        ITEM_ID: items[ITEM_ID],
        "title": items["title"],
        "genres": [list(names[row]) for row in flags],
        "year": pd.to_datetime(items["release_date"], format="%d-%b-%Y", errors="coerce").dt.year.astype("Int64"),
    })
    users = None
    if (root / "u.user").exists():
        users = pd.read_csv(
            root / "u.user", sep="|", header=None,
            names=[USER_ID, "age", "gender", "occupation", "zip_code"], dtype={"zip_code": str},
            **_ONLY_EMPTY_IS_MISSING,
        )
    origin = {"interactions": str(root / "u.data"), "items": str(root / "u.item"), "users": str(root / "u.user")}
    return RawData(ratings, items, users, origin=origin)


def _read_double_colon(path: Path, names: list[str]) -> pd.DataFrame:
    # "::" separators need pandas' slow python engine; swapping them for a byte that
    # never occurs in these files lets the C parser read ml-10m's 10M rows in seconds.
    text = path.read_bytes().decode("latin-1").replace("::", "\x1f")
    return pd.read_csv(io.StringIO(text), sep="\x1f", header=None, names=names, engine="c", **_ONLY_EMPTY_IS_MISSING)


def _read_dat(root: Path) -> RawData:
    _require(root, "ratings.dat", "movies.dat")
    ratings = _read_double_colon(root / "ratings.dat", [USER_ID, ITEM_ID, "rating", "timestamp"])
    items = _read_double_colon(root / "movies.dat", [ITEM_ID, "title", "genres"])
    items["year"] = _year_from_title(items["title"])
    users = None
    if (root / "users.dat").exists():
        users = _read_double_colon(root / "users.dat", [USER_ID, "gender", "age", "occupation", "zip_code"])
        users["zip_code"] = users["zip_code"].astype(str)
    origin = {"interactions": str(root / "ratings.dat"), "items": str(root / "movies.dat"),
              "users": str(root / "users.dat")}
    return RawData(ratings, items, users, origin=origin)


def _read_csv(root: Path) -> RawData:
    _require(root, "ratings.csv", "movies.csv")
    ratings = pd.read_csv(root / "ratings.csv", **_ONLY_EMPTY_IS_MISSING)
    ratings = ratings.rename(columns={"userId": USER_ID, "movieId": ITEM_ID})
    items = pd.read_csv(root / "movies.csv", **_ONLY_EMPTY_IS_MISSING).rename(columns={"movieId": ITEM_ID})
    items["year"] = _year_from_title(items["title"])
    origin = {"interactions": str(root / "ratings.csv"), "items": str(root / "movies.csv")}
    return RawData(ratings, items, None, origin=origin)
