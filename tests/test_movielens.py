"""MovieLens layouts, the download path (with a fake GroupLens) and the real files in ../shared."""

from __future__ import annotations

import hashlib
import io
import urllib.error
import zipfile

import pytest

from streamrec.data import DataError, MovieLensSource, SplitSpec, load_movielens, prepare_dataset
from streamrec.data import movielens

U_ITEM = "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n" \
         "2|GoldenEye (1995)|01-Jan-1995||http://x|0|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0|1|0|0\n"


def ml100k_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("1\t1\t5\t881250949\n1\t2\t3\t881250950\n2\t2\t4\t881250951\n")
    (folder / "u.item").write_text(U_ITEM, encoding="latin-1")
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    return folder


def test_ml100k_layout(tmp_path):
    data = load_movielens(root=ml100k_files(tmp_path / "ml-100k"))
    assert data.name == "ml-100k"
    assert data.interactions.shape == (3, 4)
    assert data.items["genres"].tolist() == [["Animation", "Children's", "Comedy"], ["Action", "Adventure", "Thriller"]]
    assert data.items["year"].tolist() == [1995, 1995]
    assert data.users["occupation"].tolist() == ["technician", "other"]


def test_dat_and_csv_layouts(tmp_path):
    dat = tmp_path / "ml-1m"
    dat.mkdir()
    (dat / "ratings.dat").write_text("1::1::5::978300760\n2::1::3::978302109\n")
    (dat / "movies.dat").write_text("1::Toy Story (1995)::Animation|Children's|Comedy\n", encoding="latin-1")
    (dat / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    data = load_movielens(root=dat)
    assert data.interactions["rating"].tolist() == [5, 3]
    assert data.items["year"].tolist() == [1995]
    csv = tmp_path / "ml-latest-small"
    csv.mkdir()
    (csv / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n")
    (csv / "movies.csv").write_text('movieId,title,genres\n31,"Dangerous Minds (1995)",(no genres listed)\n')
    split = prepare_dataset(MovieLensSource(root=str(csv)), split=SplitSpec(ratios=[1.0, 0.0]))
    assert split.items["genres"].tolist() == [[]] and split.items["year"].tolist() == [1995]


def test_missing_files_say_where_to_put_them(tmp_path):
    with pytest.raises(DataError, match="no MovieLens ratings file found"):
        load_movielens(root=tmp_path)
    with pytest.raises(DataError, match="is not a folder"):
        load_movielens(root=tmp_path / "absent")


def zipped(folder_name):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{folder_name}/u.data", "1\t1\t5\t881250949\n")
        archive.writestr(f"{folder_name}/u.item", U_ITEM)
    return buffer.getvalue()


def test_download_checks_md5_and_unpacks_once(tmp_path, monkeypatch):
    payload = zipped("ml-100k")
    release = movielens.RELEASES["ml-100k"]
    monkeypatch.setitem(movielens.RELEASES, "ml-100k", release.__class__(
        release.archive, release.folder, hashlib.md5(payload).hexdigest(), release.layout))
    calls = []
    monkeypatch.setattr(movielens, "_http_get", lambda url, timeout=60.0: calls.append(url) or payload)
    data = load_movielens("ml-100k", cache_dir=tmp_path)
    assert calls == ["https://files.grouplens.org/datasets/movielens/ml-100k.zip"]
    assert len(data.interactions) == 1
    load_movielens("ml-100k", cache_dir=tmp_path)
    assert len(calls) == 1  # second call reads the unpacked cache


def test_download_rejects_a_corrupt_archive(tmp_path, monkeypatch):
    monkeypatch.setattr(movielens, "_http_get", lambda url, timeout=60.0: zipped("ml-100k"))
    with pytest.raises(DataError, match="checksum mismatch"):
        load_movielens("ml-100k", cache_dir=tmp_path)
    assert not (tmp_path / "movielens" / "ml-100k").exists()


def test_offline_error_says_where_to_put_the_files(tmp_path, monkeypatch):
    def offline(url, timeout=60.0):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(movielens, "_http_get", offline)
    with pytest.raises(DataError) as err:
        load_movielens("ml-1m", cache_dir=tmp_path)
    assert "data.root=/path/to/ml-1m" in str(err.value) and str(tmp_path) in str(err.value)
    with pytest.raises(DataError, match="Unknown MovieLens variant"):
        load_movielens("ml-3k", cache_dir=tmp_path)


def test_real_ml100k(shared_dataset):
    data = prepare_dataset(MovieLensSource(root=str(shared_dataset("ml-100k"))), split=SplitSpec(ratios=[0.75, 0.25]))
    assert (data.n_users, data.n_items) == (943, 1682)
    assert len(data.train) + len(data.test) == 100_000
    assert data.users.columns.tolist() == ["user_id", "age", "gender", "occupation", "zip_code"]


@pytest.mark.parametrize("name, n_ratings", [("ml-1m-sample", 100_000), ("ml-latest-small", 100_004)])
def test_real_movielens_layouts(shared_dataset, name, n_ratings):
    data = load_movielens(root=shared_dataset(name))
    assert len(data.interactions) == n_ratings
    assert data.items["genres"].map(len).gt(0).mean() > 0.95


def test_titles_that_look_like_missing_values_are_read_verbatim(tmp_path):
    csv = tmp_path / "ml-latest-small"
    csv.mkdir()
    (csv / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,32,4,1260759145\n")
    (csv / "movies.csv").write_text("movieId,title,genres\n31,NA,Drama\n32,None (2009),\n")
    data = load_movielens(root=csv)
    assert data.items["title"].tolist() == ["NA", "None (2009)"]
    assert data.items["year"].isna().tolist() == [True, False]
