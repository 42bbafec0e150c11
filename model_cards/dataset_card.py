"""The dataset card of a published data build (`training.publish --dataset`), made like the model card."""

from pathlib import Path

import yaml
from huggingface_hub import DatasetCard, DatasetCardData

from model_cards.generate import GENERATED_MARKER
from training.data.hub import CONFIGS, hub_configs

TEMPLATE = Path(__file__).with_name("dataset_card_template.md")
MOVIELENS_README = "https://files.grouplens.org/datasets/movielens/ml-100k-README.txt"
# GroupLens' terms for MovieLens-100K, as its README states them
MOVIELENS_TERMS = (
    "Built from **MovieLens-100K** (GroupLens Research, University of Minnesota), whose terms apply to this "
    f"derived data as well ([README]({MOVIELENS_README})): the data may be used for research only, **not "
    "redistributed without separate permission** from GroupLens, and not used commercially without their "
    "permission; publications that use it must cite F. Maxwell Harper and Joseph A. Konstan, \"The MovieLens "
    "Datasets: History and Context\", ACM TiiS 5(4), 2015; no endorsement by the University of Minnesota or "
    "GroupLens may be stated or implied. Keep the repository private unless GroupLens has allowed you to share it."
)


def is_movielens(stats: dict) -> bool:
    return str((stats.get("source") or {}).get("name", "")).lower().startswith(("ml-", "movielens"))


def build_dataset_card(rows: dict, stats: dict, repo_id: str, license: str | None = None) -> DatasetCard:
    """`rows`: config -> split -> row count (`export_dataset`'s return); `stats`: the build's stats.json."""
    movielens = is_movielens(stats)
    if movielens:
        license_fields = {"license": "other", "license_name": "movielens-100k", "license_link": MOVIELENS_README}
        license_note = MOVIELENS_TERMS
    else:
        license_fields = {"license": license or "other"}
        license_note = (
            f"Released under `{license}` by its publisher." if license
            else "The terms of the source data apply; its publisher did not state a license (`--license`)."
        )
    card_data = DatasetCardData(
        pretty_name=repo_id.split("/")[-1],
        tags=["recommendation", "collaborative-filtering", "ilm"],
        task_categories=["text-generation"],
        configs=hub_configs(rows),
        **license_fields,
    )
    config = stats.get("config", {})
    table = [
        {"name": name, "what": CONFIGS[name], "splits": ", ".join(f"{split} ({count:,})" for split, count in splits.items())}
        for name, splits in rows.items()
    ]
    source = (stats.get("source") or {}).get("name", "the user's interaction data")
    return DatasetCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        marker=GENERATED_MARKER,
        title=repo_id.split("/")[-1],
        source=f"MovieLens-100K ({source})" if movielens else source,
        num_candidates=config.get("num_candidates", 20),
        configs=table,
        repo_id=repo_id,
        build_yaml=yaml.safe_dump({"config": config, "counts": stats.get("counts", {})}, sort_keys=False),
        license_note=license_note,
    )


def write_dataset_card(folder, rows: dict, stats: dict, repo_id: str, license: str | None = None) -> Path:
    path = Path(folder) / "README.md"
    build_dataset_card(rows, stats, repo_id, license).save(path)
    return path


__all__ = ["build_dataset_card", "is_movielens", "write_dataset_card"]
