"""Raw tables: read interactions / items / users files, validate them, normalise them.

Every loader (generic files, GroupLens, RecBole) ends in `prepare_tables`, so all sources obey the
same rules. Ids are strings from here on. Bad input raises DataValidationError naming the file,
the column and an example row; the few documented drops are counted in `Tables.dropped`.
"""

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .templates import ITEM_TOKEN, USER_TOKEN

log = logging.getLogger(__name__)

INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")  # + optional "rating"
ITEM_COLUMNS = ("item_id", "title")  # + optional "genres", "year", "description", any text column
USER_COLUMNS = ("user_id",)  # + any attribute columns
GENRE_SEPARATOR = "|"
YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")


class DataValidationError(ValueError):
    """Input data that cannot be used as is. The message names file, column and an example row."""


@dataclass
class Tables:
    interactions: pd.DataFrame  # user_id, item_id (str), rating (float), timestamp (int64); file row order
    items: pd.DataFrame  # item_id, title, genres (list[str]), year (int or None), + extra text columns
    users: pd.DataFrame | None  # user_id + attribute columns, or None
    has_ratings: bool
    dropped: dict = field(default_factory=dict)  # reason -> number of rows dropped
    files: dict = field(default_factory=dict)  # table name -> file it came from


def read_table(path):
    """Read a CSV / TSV / Parquet file. CSV cells are read as strings; only empty cells are missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".csv", ".tsv", ".tab", ".txt"):
        raise DataValidationError(f"{path}: unsupported file type '{suffix}' (use .csv, .tsv or .parquet)")
    sep = "," if suffix == ".csv" else "\t"
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError as err:
        raise DataValidationError(f"{path}: the file is empty; it needs a header row and data rows.") from err
    except pd.errors.ParserError as err:  # e.g. a row with more fields than the header
        raise DataValidationError(f"{path}: not valid {sep!r}-separated values ({str(err).strip()}); fix that row.") from err
    except UnicodeDecodeError as err:
        raise DataValidationError(f"{path}: not UTF-8 text (byte {err.object[err.start:err.start + 1]!r} at offset {err.start}); save it as UTF-8.") from err
    except (OSError, ValueError) as err:
        if suffix != ".parquet" or isinstance(err, PermissionError):
            raise
        raise DataValidationError(f"{path}: not a readable parquet file ({err}).") from err


def load_generic(interactions, items, users=None):
    """Tables from the generic format (see training/data/README.md)."""
    frames = {"interactions": read_table(interactions), "items": read_table(items)}
    files = {"interactions": str(interactions), "items": str(items)}
    if users is not None:
        frames["users"] = read_table(users)
        files["users"] = str(users)
    return prepare_tables(frames["interactions"], frames["items"], frames.get("users"), files)


def _fail(file, column, problem, df, bad_mask):
    bad = np.flatnonzero(np.asarray(bad_mask))
    i = int(bad[0])
    row = {k: (None if _missing(v) else v) for k, v in df.iloc[i].to_dict().items()}
    raise DataValidationError(
        f"{file}: column '{column}' {problem}; {len(bad)} bad row(s), e.g. data row {i + 1} "
        f"(1-based, header excluded): {row}"
    )


KNOWN_COLUMNS = {*INTERACTION_COLUMNS, "rating", *ITEM_COLUMNS, "genres", "year", "description", *USER_COLUMNS}
# chat control tokens (<|im_end|>, <|start_header_id|>, ...): in item text they would end a turn inside a prompt
CONTROL_TOKEN = re.compile(r"<\|[^|<>]{1,40}\|>")


def _require_columns(df, columns, file):
    if len(df) == 0:
        raise DataValidationError(f"{file}: table is empty")
    for column in df.columns:
        name = str(column).strip().lower()
        if name != column and name in KNOWN_COLUMNS:  # "Rating" would otherwise be an unknown text column
            raise DataValidationError(f"{file}: column {column!r} looks like {name!r}; column names are lower case: rename it")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataValidationError(f"{file}: missing column(s) {missing}; found {list(df.columns)}")


def _missing(v):
    return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, (float, np.floating)) and np.isnan(v))


def _ids(series):
    """Ids as stripped strings; integral floats (e.g. from Parquet) lose their '.0'. Missing -> None."""

    def one(v):
        if _missing(v):
            return None
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            v = int(v)
        s = str(v).strip()
        return s or None

    return pd.Series([one(v) for v in series], index=series.index, dtype=object)


def _numeric(df, column, file, integral=False):
    """Column as float64 (NaN where missing); non-numeric cells are an error."""
    s = df[column]
    if pd.api.types.is_datetime64_any_dtype(s):
        return (s.astype("datetime64[s]").astype("int64")).astype("float64").where(s.notna())
    blank = s.isna() | (s.astype(str).str.strip() == "")
    values = pd.to_numeric(s.where(~blank), errors="coerce").astype("float64")
    bad = values.isna() & ~blank | np.isinf(values)
    if bad.any():
        _fail(file, column, "has non-numeric values", df, bad)
    if integral:
        bad = values.notna() & (values != np.floor(values))
        if bad.any():
            _fail(file, column, "has non-integer values", df, bad)
    return values


def _text(series):
    # built as an object Series so missing stays None (pandas' str dtype would turn it into NaN)
    return pd.Series(
        [None if _missing(v) or str(v).strip() == "" else str(v).strip() for v in series],
        index=series.index,
        dtype=object,
    )


def title_year(titles):
    """The "1995" of "Toy Story (1995)" as a string Series (NaN where the title has none)."""
    return titles.str.extract(YEAR_IN_TITLE, expand=False)


def _genres(v):
    if isinstance(v, (list, tuple, np.ndarray)):  # Parquet list column
        parts = list(v)
    else:
        parts = [] if _missing(v) else str(v).split(GENRE_SEPARATOR)
    return [g.strip() for g in map(str, parts) if g.strip()]


def _attribute(series):
    """User attribute: integers stay integers, other values become strings, missing -> None."""
    text = _text(series)
    numbers = pd.to_numeric(text, errors="coerce")
    if text.notna().any() and (numbers.notna() == text.notna()).all() and (numbers.dropna() % 1 == 0).all():
        return pd.Series([None if np.isnan(v) else int(v) for v in numbers], index=series.index, dtype=object)
    return text


def prepare_tables(inter, items, users=None, files=None):
    """Validate and normalise raw frames (column names already generic). Returns Tables."""
    files = {k: str(v) for k, v in (files or {}).items()}
    fi, ft, fu = (files.get(k, f"<{k} table>") for k in ("interactions", "items", "users"))
    dropped = {}

    # --- items: unique non-empty ids; rows without a title are dropped (with their interactions)
    _require_columns(items, ITEM_COLUMNS, ft)
    items = items.reset_index(drop=True).copy()
    items["item_id"] = _ids(items["item_id"])
    if items["item_id"].isna().any():
        _fail(ft, "item_id", "has empty ids", items, items["item_id"].isna())
    dup = items["item_id"].duplicated(keep=False)
    if dup.any():
        _fail(ft, "item_id", "has duplicate ids", items, dup)
    for col in items.columns:
        if col not in ("item_id", "genres", "year"):
            items[col] = _text(items[col])
    items["genres"] = items["genres"].map(_genres) if "genres" in items else [[] for _ in range(len(items))]
    year = _numeric(items, "year", ft, integral=True) if "year" in items else pd.Series(np.nan, index=items.index)
    from_title = title_year(items["title"]).astype("float64")
    items["year"] = pd.Series(
        [None if np.isnan(y) else int(y) for y in year.fillna(from_title)], index=items.index, dtype=object
    )
    no_title = items["title"].isna()
    dropped["items_missing_title"] = int(no_title.sum())
    dropped_item_ids = set(items.loc[no_title, "item_id"])
    first = ["item_id", "title", "genres", "year"]
    items = items.loc[~no_title, first + [c for c in items.columns if c not in first]].reset_index(drop=True)

    # --- users (optional): unique ids, attribute columns
    if users is not None:
        _require_columns(users, USER_COLUMNS, fu)
        users = users.reset_index(drop=True).copy()
        users["user_id"] = _ids(users["user_id"])
        if users["user_id"].isna().any():
            _fail(fu, "user_id", "has empty ids", users, users["user_id"].isna())
        dup = users["user_id"].duplicated(keep=False)
        if dup.any():
            _fail(fu, "user_id", "has duplicate ids", users, dup)
        for col in users.columns:
            if col != "user_id":
                users[col] = _attribute(users[col])

    # placeholders inside real text would shift the item/user id lists of phase-2 examples, and
    # control tokens would be read as the chat's structure
    def reserved(value):
        texts = value if isinstance(value, list) else [value]
        return any(isinstance(t, str) and (ITEM_TOKEN in t or USER_TOKEN in t or CONTROL_TOKEN.search(t)) for t in texts)

    for df, f in ((items, ft), (users, fu), (inter[[c for c in ("user_id", "item_id") if c in inter]], fi)):
        for col in [] if df is None else df.columns:
            s = df[col].map(reserved)
            if s.any():
                _fail(f, col, f"contains the reserved strings {ITEM_TOKEN!r}/{USER_TOKEN!r} or a chat control token like '<|im_end|>'", df, s)

    # --- interactions
    _require_columns(inter, INTERACTION_COLUMNS, fi)
    inter = inter.reset_index(drop=True)
    out = pd.DataFrame({"user_id": _ids(inter["user_id"]), "item_id": _ids(inter["item_id"])})
    has_ratings = "rating" in inter.columns
    out["rating"] = _numeric(inter, "rating", fi) if has_ratings else 1.0  # no ratings: implicit feedback
    if has_ratings and (out["rating"] < 0).any():
        _fail(fi, "rating", "has negative values (ALS weighs each interaction by 1 + alpha x rating): shift ratings to >= 0", inter, out["rating"] < 0)
    ts = _numeric(inter, "timestamp", fi, integral=True)
    if ts.isna().any():
        _fail(fi, "timestamp", "has missing values", inter, ts.isna())
    if (ts.abs() >= 2.0**62).any():  # beyond int64 they would wrap around and reorder events
        _fail(fi, "timestamp", "has values too large for 64-bit integers (use seconds or milliseconds since 1970)", inter, ts.abs() >= 2.0**62)
    out["timestamp"] = ts.astype("int64")

    keep = pd.Series(True, index=out.index)
    for reason, mask in (
        ("interactions_missing_id", out["user_id"].isna() | out["item_id"].isna()),
        ("interactions_missing_rating", out["rating"].isna()),
        ("interactions_of_items_missing_title", out["item_id"].isin(dropped_item_ids)),
    ):
        mask = mask & keep
        dropped[reason] = int(mask.sum())
        keep &= ~mask
    unknown = keep & ~out["item_id"].isin(set(items["item_id"]))
    if unknown.any():
        _fail(fi, "item_id", f"names items not in the items table {ft}", inter, unknown)
    if users is not None:
        unknown = keep & ~out["user_id"].isin(set(users["user_id"]))
        if unknown.any():
            _fail(fi, "user_id", f"names users not in the users table {fu}", inter, unknown)
    out = out[keep].reset_index(drop=True)
    if len(out) == 0:
        raise DataValidationError(f"{fi}: no usable interactions left after dropping {dropped}")
    for reason, n in dropped.items():
        if n:
            log.warning("dropped %d row(s): %s", n, reason)
    return Tables(out, items, users, has_ratings, dropped, files)
