"""The item/user catalog (catalog.json) and the texts derived from real fields only."""

import json
from pathlib import Path

GENDERS = {"M": "male", "F": "female"}


def item_text(item, extra_columns=()):
    """ "Toy Story (1995). Genres: Animation, Children's, Comedy." + description / other columns."""
    parts = [item["title"].rstrip(".") + "."]
    if item["genres"]:
        parts.append(f"Genres: {', '.join(item['genres'])}.")
    if item.get("description"):
        parts.append(item["description"])
    for col in extra_columns:
        if item.get(col):
            parts.append(f"{col.replace('_', ' ').capitalize()}: {item[col]}.")
    return " ".join(parts)


def _with_article(words):
    head = words.split("-")[0]
    # "an 8-", "an 11-", "an 18-", "an 80-year-old"; "an educator"
    vowel = (head.startswith("8") or head in ("11", "18")) if head.isdigit() else words[0].lower() in "aeiou"
    return ("an " if vowel else "a ") + words


def user_profile(user):
    """ "This user is a 24-year-old male. Occupation: technician." from whatever attributes exist."""
    attrs = {k: v for k, v in user.items() if k != "user_id" and v is not None and v != ""}
    age, gender = attrs.pop("age", None), attrs.pop("gender", None)
    gender = None if gender is None else GENDERS.get(str(gender).upper(), gender)
    words = " ".join(w for w in (None if age is None else f"{age}-year-old", gender) if w)
    parts = [f"This user is {_with_article(words)}."] if words else []
    parts += [f"{k.replace('_', ' ').capitalize()}: {v}." for k, v in attrs.items()]
    return " ".join(parts)


def build_catalog(tables):
    """{"items": [...], "users": [...]} in table order; users without a users table are bare ids."""
    known = {"item_id", "title", "genres", "year", "description"}
    extra = [c for c in tables.items.columns if c not in known]
    items = []
    for row in tables.items.to_dict("records"):
        entry = {"item_id": row["item_id"], "title": row["title"], "text": item_text(row, extra)}
        entry |= {"genres": row["genres"], "year": row["year"]}
        entry |= {c: row[c] for c in ("description", *extra) if row.get(c) is not None}
        items.append(entry)
    if tables.users is not None:
        users = tables.users.to_dict("records")
    else:
        users = [{"user_id": u} for u in tables.interactions["user_id"].drop_duplicates()]
    return {"items": items, "users": users}


def save_catalog(path, catalog):
    Path(path).write_text(json.dumps(catalog, indent=1, ensure_ascii=False))
