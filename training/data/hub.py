"""A data build as a Hugging Face dataset: one config per table, parquet files, a dataset card.

    python -m training.publish --dataset runs/ml100k/data --repo-id you/ilm-ml100k-data --private [--dry-run --out DIR]

Loads back with `datasets.load_dataset(repo_id_or_folder, CONFIG)`. The CF embeddings the build
trained (safetensors) and their id maps ride along under `cf/`, so a model can be retrained from
the published copy alone.
"""

import json
import shutil
from pathlib import Path

from datasets import Dataset, DatasetDict, load_from_disk

# config -> what a row holds (the card's table)
CONFIGS = {
    "item_texts": "one catalog item and its text (phase 1: item-text contrastive, matching and generation)",
    "item_item": "two items consumed close together by some user, and how often (phase 1: item-item contrastive)",
    "user_item": "a user and an item they liked (phase 1: user-item contrastive)",
    "chats": "a phase-2 chat: task, template, messages with `<item>`/`<user>` placeholders, their ids, the answer",
    "candidates": "a user's evaluation candidates: the held-out item (`target`, listed first) and never-seen items",
    "interactions": "one interaction (user, item, rating, timestamp), split leave-one-out by time",
    "items": "the catalog: item id, title and text fields, in the CF table's row order",
    "users": "the users, in the CF table's row order",
}
CF_FILES = ("embeddings.safetensors", "id_maps.json", "cf_config.json", "als_eval.json")


def dataset_tables(data_dir) -> dict[str, DatasetDict]:
    """Every table of a data build, as config name -> splits."""
    data_dir = Path(data_dir)
    if not (data_dir / "stats.json").is_file():
        raise FileNotFoundError(f"{data_dir} has no stats.json: not a data build (python -m training.data build ... --out DIR).")
    phase1 = load_from_disk(str(data_dir / "phase1"))
    catalog = json.loads((data_dir / "catalog.json").read_text())

    def candidates(split):
        rows = json.loads((data_dir / "candidates" / f"{split}.json").read_text())
        return Dataset.from_list([{"user_id": user, "target": items[0], "candidates": items} for user, items in rows.items()])

    tables = {
        name: DatasetDict({split: phase1[f"{prefix}_{split}"] for split in ("train", "validation")})
        for name, prefix in (("item_texts", "item_text"), ("item_item", "item_item"), ("user_item", "user_item"))
    }
    tables["chats"] = load_from_disk(str(data_dir / "phase2"))
    tables["candidates"] = DatasetDict({split: candidates(split) for split in ("validation", "test")})
    tables["interactions"] = load_from_disk(str(data_dir / "interactions"))
    tables["items"] = DatasetDict(train=Dataset.from_list(catalog["items"]))
    if catalog.get("users"):
        tables["users"] = DatasetDict(train=Dataset.from_list(catalog["users"]))
    return tables


def export_dataset(data_dir, out) -> dict[str, dict[str, int]]:
    """Writes `out/<config>/<split>.parquet` for every table and `out/cf/` (CF embeddings, id maps).
    Returns config -> split -> rows."""
    data_dir, out = Path(data_dir), Path(out)
    rows = {}
    for name, splits in dataset_tables(data_dir).items():
        rows[name] = {}
        for split, table in splits.items():
            table.to_parquet(str(out / name / f"{split}.parquet"))
            rows[name][split] = table.num_rows
    (out / "cf").mkdir(parents=True, exist_ok=True)
    for name in CF_FILES:
        if (data_dir / "cf" / name).is_file():
            shutil.copy2(data_dir / "cf" / name, out / "cf" / name)
    return rows


def hub_configs(rows: dict) -> list[dict]:
    """The card's `configs:` block: where `load_dataset(..., CONFIG)` finds each split."""
    return [
        {"config_name": name, "data_files": [{"split": split, "path": f"{name}/{split}.parquet"} for split in splits]}
        for name, splits in rows.items()
    ]


__all__ = ["CONFIGS", "dataset_tables", "export_dataset", "hub_configs"]
