"""Tests of the data layer (training/data). Fast ones use the small fixtures in tests/fixtures/data."""

import json
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from datasets import load_from_disk
from safetensors.numpy import load_file

from training.data import ITEM_TOKEN, USER_TOKEN, DataValidationError, build_dataset, load_candidates
from training.data import movielens
from training.data.__main__ import main as cli_main
from training.data.cf import interaction_matrix
from training.data.splits import leave_one_out
from training.data.templates import TASKS, TEMPLATES, get_template, template_ids

FIXTURES = Path(__file__).parent / "fixtures" / "data"
GENERIC = FIXTURES / "generic"
FAST = dict(cf_dim=8, cf_iterations=3)  # small ALS keeps the fixture builds quick


def copy_generic(folder, **edits):
    """Copy the generic fixture into a new folder, applying edits {file name: function(DataFrame) -> DataFrame}."""
    folder.mkdir()
    for name in ("interactions.csv", "items.csv", "users.csv"):
        df = pd.read_csv(GENERIC / name, dtype=str, keep_default_na=False)
        if name in edits:
            df = edits[name](df)
        df.to_csv(folder / name, index=False)
    return folder


def build_generic(src, out, users=True, **overrides):
    return build_dataset(
        out,
        interactions=src / "interactions.csv",
        items=src / "items.csv",
        users=src / "users.csv" if users else None,
        **(FAST | overrides),
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("built") / "data"
    stats = build_generic(GENERIC, out)
    return out, stats


# --------------------------------------------------------------------------------------------- splits


def test_leave_one_out_by_time_with_ties():
    inter = pd.DataFrame(
        {
            "user_id": ["a", "a", "a", "a", "b", "b", "c", "c", "c"],
            "item_id": ["1", "2", "3", "4", "1", "2", "5", "6", "7"],
            "rating": 1.0,
            "timestamp": [30, 10, 20, 20, 1, 2, 5, 5, 5],  # a: 3 and 4 tie at t=20; c: all tie
        }
    )
    splits, stats = leave_one_out(inter, ["a", "b", "c"])
    by_user = lambda s: splits[s].groupby("user_id")["item_id"].apply(list).to_dict()
    # a in time order: 2 (t10), 3 (t20, earlier row), 4 (t20), 1 (t30)
    assert by_user("train") == {"a": ["2", "3"], "b": ["1", "2"], "c": ["5"]}
    assert by_user("validation") == {"a": ["4"], "c": ["6"]}
    assert by_user("test") == {"a": ["1"], "c": ["7"]}  # ties: the later file row is the later event
    assert stats["users_train_only_lt3_interactions"] == 1 and stats["users_evaluated"] == 2
    assert stats["interactions"] == {"train": 5, "validation": 2, "test": 2}


def test_generic_build_splits_on_disk(built):
    out, stats = built
    ds = load_from_disk(str(out / "interactions"))
    assert set(ds) == {"train", "validation", "test"}
    assert {k: str(v.dtype) for k, v in ds["train"].features.items()} == {
        "user_id": "string",
        "item_id": "string",
        "rating": "float64",
        "timestamp": "int64",
    }
    val = dict(zip(ds["validation"]["user_id"], ds["validation"]["item_id"]))
    test = dict(zip(ds["test"]["user_id"], ds["test"]["item_id"]))
    # u2's last two rows share t=500: file order 13 then 12 -> 13 validation, 12 test
    assert (val["u2"], test["u2"]) == ("13", "12")
    # u6's rows are in reverse time order in the file
    assert (val["u6"], test["u6"]) == ("19", "20")
    assert test["u3"] == "007"  # ids stay strings, leading zeros included
    # users with < 3 interactions (u4, u5) are train only; u8 has no interactions at all
    assert set(val) == set(test) == {"u1", "u2", "u3", "u6", "u7"}
    assert stats["splits"]["users_train_only_lt3_interactions"] == 2
    assert stats["users_without_interactions"] == 1
    assert stats["splits"]["interactions"] == {"train": 25, "validation": 5, "test": 5}
    assert not any(np.isnan(ds["train"]["rating"]))


# --------------------------------------------------------------------------------------------- CF


def test_cf_outputs(built):
    out, stats = built
    tensors = load_file(str(out / "cf" / "embeddings.safetensors"))
    ids = json.loads((out / "cf" / "id_maps.json").read_text())
    catalog = json.loads((out / "catalog.json").read_text())
    assert ids["item_ids"] == [it["item_id"] for it in catalog["items"]]
    assert ids["user_ids"] == [u["user_id"] for u in catalog["users"]] == [f"u{i}" for i in range(1, 9)]
    assert tensors["item_embeddings"].shape == (30, 8) and tensors["item_embeddings"].dtype == np.float32
    assert tensors["user_embeddings"].shape == (8, 8) and tensors["user_embeddings"].dtype == np.float32
    cfg = json.loads((out / "cf" / "cf_config.json").read_text())
    assert cfg["train_interactions"] == 25 and cfg["dim"] == 8 and cfg["seed"] == 0 and cfg["implicit_version"]
    als = json.loads((out / "cf" / "als_eval.json").read_text())
    assert als["validation"]["users"] == 5 and 0 <= als["validation"]["hr@1"] <= als["validation"]["hr@10"] <= 1


def test_cf_matrix_holds_train_only(built):
    out, _ = built
    ds = load_from_disk(str(out / "interactions"))
    ids = json.loads((out / "cf" / "id_maps.json").read_text())
    train = ds["train"].to_pandas()
    m = interaction_matrix(train, ids["item_ids"], ids["user_ids"], alpha=1.0)
    assert m.nnz == len(train.drop_duplicates(["user_id", "item_id"]))
    for split in ("validation", "test"):
        for u, t in zip(ds[split]["user_id"], ds[split]["item_id"]):
            if t not in set(train.loc[train.user_id == u, "item_id"]):
                assert m[ids["user_ids"].index(u), ids["item_ids"].index(t)] == 0


def test_no_leakage_into_cf(tmp_path, built):
    """Changing validation/test interactions leaves the factors unchanged; changing a train one does not."""
    base = load_file(str(built[0] / "cf" / "embeddings.safetensors"))

    def change_held_out(df):
        df = df.copy()
        df.loc[(df.user_id == "u1") & (df.item_id == "10"), ["item_id", "rating"]] = ["26", "1"]  # u1's test row
        df.loc[(df.user_id == "u3") & (df.item_id == "15"), "item_id"] = "27"  # u3's validation row
        return df

    src = copy_generic(tmp_path / "src", **{"interactions.csv": change_held_out})
    stats = build_generic(src, tmp_path / "held")
    changed = load_file(str(tmp_path / "held" / "cf" / "embeddings.safetensors"))
    # the edits really reached the held-out splits, and train is untouched
    assert json.loads((tmp_path / "held" / "candidates" / "test.json").read_text())["u1"][0] == "26"
    assert json.loads((tmp_path / "held" / "candidates" / "validation.json").read_text())["u3"][0] == "27"
    assert stats["splits"]["interactions"]["train"] == 25
    for k in base:
        np.testing.assert_array_equal(base[k], changed[k])

    def change_train(df):
        df = df.copy()
        df.loc[(df.user_id == "u1") & (df.item_id == "4"), "rating"] = "1"
        return df

    build_generic(copy_generic(tmp_path / "src2", **{"interactions.csv": change_train}), tmp_path / "train")
    moved = load_file(str(tmp_path / "train" / "cf" / "embeddings.safetensors"))
    assert not np.array_equal(base["item_embeddings"], moved["item_embeddings"])


# --------------------------------------------------------------------------------------------- catalog


def test_catalog(built):
    out, _ = built
    catalog = json.loads((out / "catalog.json").read_text())
    items = {it["item_id"]: it for it in catalog["items"]}
    assert len(items) == 30 and "007" in items and "A-29" in items
    assert items["1"] == {
        "item_id": "1",
        "title": "Harbor River (1980)",
        "text": "Harbor River (1980). Genres: Drama. Fixture description 0.",
        "genres": ["Drama"],
        "year": 1980,
        "description": "Fixture description 0.",
    }
    assert items["5"]["genres"] == [] and items["5"]["text"] == "Glass Light (1992). Fixture description 4."
    assert items["6"]["year"] is None  # no year column value and none in the title
    assert items["7"]["title"] == "Lighthouse, The (1998)"  # quoted comma survives
    assert catalog["users"][0] == {"user_id": "u1", "age": 24, "gender": "M", "occupation": "technician"}


def test_grouplens_and_recbole_layouts_agree():
    a = movielens.load_grouplens(FIXTURES / "grouplens")
    b = movielens.load_recbole_ml100k(FIXTURES / "recbole")
    for x, y in ((a.interactions, b.interactions), (a.items, b.items), (a.users, b.users)):
        pd.testing.assert_frame_equal(x, y)
    items = a.items.set_index("item_id")
    assert items.loc["1", "title"] == "Harbor River (1995)" and items.loc["1", "genres"] == [
        "Animation",
        "Children's",
        "Comedy",
    ]
    assert items.loc["3", "title"] == "Café Müller (1994)"  # latin-1 in u.item, utf-8 in recbole
    assert items.loc["5", "title"] == "Land Before Time III (1995)" and items.loc["5", "year"] == 1995  # year "V"
    assert "6" not in items.index  # title "unknown"/"unkonwn": dropped with its interaction
    assert a.dropped["items_missing_title"] == 1 and a.dropped["interactions_of_items_missing_title"] == 1
    assert list(a.users.columns) == ["user_id", "age", "gender", "occupation"]


def test_recbole_wheel_fetch(tmp_path, monkeypatch):
    wheel = tmp_path / "recbole-1.2.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name in movielens.ML100K_FILES:
            z.write(FIXTURES / "recbole" / name, f"{movielens.WHEEL_DATA_DIR}/{name}")
    with pytest.raises(DataValidationError, match="sha256 .* does not match"):
        movielens.fetch_ml100k(wheel, cache=tmp_path / "cache")
    # right digest: extracts the three files; a later call reuses them without pip
    folder = movielens.fetch_ml100k(wheel, cache=tmp_path / "cache", expected_sha256=movielens.sha256(wheel))
    assert sorted(p.name for p in folder.iterdir()) == sorted(movielens.ML100K_FILES)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    assert movielens.fetch_ml100k(cache=tmp_path / "cache") == folder
    # an unzipped wheel folder is accepted as is
    unzipped = tmp_path / "unzipped"
    zipfile.ZipFile(wheel).extractall(unzipped)
    assert movielens.fetch_ml100k(unzipped, cache=tmp_path / "cache2") == unzipped / movielens.WHEEL_DATA_DIR
    monkeypatch.setenv("ILM_CACHE", str(tmp_path / "env"))
    assert movielens.cache_dir() == tmp_path / "env" / "recbole-1.2.1"


# --------------------------------------------------------------------------------------------- phase 1


def test_phase1(built):
    out, _ = built
    p1 = load_from_disk(str(out / "phase1"))
    train_items, val_items = set(p1["item_text_train"]["item_id"]), set(p1["item_text_validation"]["item_id"])
    assert len(val_items) == 3 and not train_items & val_items
    pairs = p1["item_item_train"].to_pandas()
    counts = {(a, b): c for a, b, c in zip(pairs.item_id, pairs.partner_id, pairs["count"])}
    # 1 -> 2 -> 3 is consumed in a row by u1, u2, u6 (and 1 -> 2 by u4) in train, window 2
    assert counts[("1", "2")] == 4 and counts[("2", "3")] == 3 and counts[("1", "3")] == 3
    assert (pairs.item_id != pairs.partner_id).all()
    assert not pairs.duplicated(["item_id", "partner_id"]).any()
    # held-out pairs: (last train item, validation item)
    held = set(zip(p1["item_item_validation"]["item_id"], p1["item_item_validation"]["partner_id"]))
    assert ("8", "9") in held and ("11", "13") in held
    ui = p1["user_item_train"].to_pandas()
    assert ("u1", "1") in set(zip(ui.user_id, ui.item_id)) and ("u1", "4") not in set(zip(ui.user_id, ui.item_id))


# --------------------------------------------------------------------------------------------- phase 2


def test_templates_hold_out_one_per_task():
    for task in TASKS:
        seen, unseen = template_ids(task, unseen=False), template_ids(task, unseen=True)
        assert len(TEMPLATES[task]) >= 4 and len(unseen) >= 1 and not set(seen) & set(unseen)
        for tid in seen + unseen:
            assert len(get_template(tid)) % 2 == 0  # ends with an assistant turn


def test_unseen_templates_never_in_train(built):
    out, _ = built
    p2 = load_from_disk(str(out / "phase2"))
    assert set(p2) == {"train", "validation", "test", "validation_unseen", "test_unseen"}
    held = {tid for task in TASKS for tid in template_ids(task, unseen=True)}
    for split in ("train", "validation", "test"):
        assert not set(p2[split]["template_id"]) & held
    for split in ("validation_unseen", "test_unseen"):
        assert set(p2[split]["template_id"]) <= held and len(p2[split]) > 0
    # the unseen prompts' wording never occurs in train
    train_prompts = {m["content"] for msgs in p2["train"]["messages"] for m in msgs}
    for msgs in p2["test_unseen"]["messages"]:
        assert msgs[0]["content"] not in train_prompts


def test_phase2_rows_are_consistent(built):
    out, stats = built
    p2 = load_from_disk(str(out / "phase2"))
    catalog = json.loads((out / "catalog.json").read_text())
    titles = {it["item_id"]: it["title"] for it in catalog["items"]}
    users = {u["user_id"] for u in catalog["users"]}
    for split, ds in p2.items():
        for row in ds:
            msgs = row["messages"]
            assert [m["role"] for m in msgs] == ["user", "assistant"] * (len(msgs) // 2)
            assert row["target"] == msgs[-1]["content"]
            text = "".join(m["content"] for m in msgs)
            assert text.count(ITEM_TOKEN) == len(row["item_ids"]) and set(row["item_ids"]) <= set(titles)
            assert text.count(USER_TOKEN) == len(row["user_ids"]) and set(row["user_ids"]) <= users
            if row["target_item_id"]:
                assert titles[row["target_item_id"]] in row["target"]
        assert set(ds["task"]) <= set(TASKS)
        for task in TASKS:
            assert ds["task"].count(task) == stats["phase2"][task][split]
    assert set(p2["train"]["task"]) == set(TASKS)


def test_phase2_eval_targets_are_held_out(built):
    out, _ = built
    p2 = load_from_disk(str(out / "phase2"))
    inter = load_from_disk(str(out / "interactions"))
    train_pairs = set(zip(inter["train"]["user_id"], inter["train"]["item_id"]))
    for split in ("validation", "test"):
        held = dict(zip(inter[split]["user_id"], inter[split]["item_id"]))
        rows = [r for r in p2[split] if r["task"] in ("next_item_title", "candidate_selection")]
        assert len(rows) == 2 * len(held)
        # candidate prompts hold the exact list of candidates/<split>.json, shuffled
        cands = json.loads((out / "candidates" / f"{split}.json").read_text())
        for r in rows:
            if r["task"] == "candidate_selection" and r["user_ids"]:
                u = r["user_ids"][0]
                assert r["target_item_id"] == held[u] and set(cands[u]) <= set(r["item_ids"])
    # train sequence examples only target train interactions
    for r in p2["train"]:
        if r["task"] in ("next_item_title", "candidate_selection") and r["user_ids"]:
            assert (r["user_ids"][0], r["target_item_id"]) in train_pairs
    # item-level tasks: evaluation items never appear in train item-level examples
    item_tasks = ("item_title", "item_genres", "item_year", "similar_item")
    train_items = {r["item_ids"][0] for r in p2["train"] if r["task"] in item_tasks}
    eval_items = {r["item_ids"][0] for s in ("validation", "test") for r in p2[s] if r["task"] in item_tasks}
    assert eval_items and not train_items & eval_items


def test_phase2_caps(tmp_path):
    stats = build_generic(GENERIC, tmp_path / "capped", max_train_per_task=5, max_eval_per_task=2)
    for task, counts in stats["phase2"].items():
        assert counts["train"] <= 5 and all(counts[s] <= 2 for s in counts if s != "train")
    assert stats["phase2"]["user_rating"]["train"] == 5 and stats["caps"] == {
        "max_train_per_task": 5,
        "max_eval_per_task": 2,
    }


def build_candidate_rendering(built, out, **options):
    """A build of the generic fixture with candidate-list `options`: (titles, the default build's
    phase 2, this one's phase 2)."""
    build_generic(GENERIC, out, **options)
    titles = {it["item_id"]: it["title"] for it in json.loads((out / "catalog.json").read_text())["items"]}
    return titles, load_from_disk(str(built[0] / "phase2")), load_from_disk(str(out / "phase2"))


def candidate_prompts(plain, rendered, splits):
    """Checks that a candidate rendering changes only candidate-selection prompts and keeps their
    ids in order, one placeholder each (so placeholders line up); yields (the default build's
    example, this build's example, its prompt text) for each candidate-selection example."""
    for split in splits:
        assert plain[split]["item_ids"] == rendered[split]["item_ids"]
        for a, b in zip(plain[split], rendered[split]):
            if a["task"] != "candidate_selection":
                assert a["messages"] == b["messages"]
                continue
            text = b["messages"][0]["content"]
            assert text.count(ITEM_TOKEN) == len(b["item_ids"])
            yield a, b, text


def test_candidate_titles_show_each_candidate_title_before_its_placeholder(built, tmp_path):
    out, _ = built
    titled_out = tmp_path / "titled"
    titles, plain, titled = build_candidate_rendering(built, titled_out, candidate_titles=True)
    for a, b, text in candidate_prompts(plain, titled, ("train", "validation", "test")):
        shown = [i for i in b["item_ids"] if f"{titles[i]} {ITEM_TOKEN}" in text]
        history = a["messages"][0]["content"].count(ITEM_TOKEN) - len(shown)
        assert len(shown) >= 2 and history >= 1  # candidates are titled; the history keeps bare placeholders
    # evaluation renders candidate prompts as the data was built; the text baseline sees each title once
    from training.evaluate.prompts import CANDIDATE_TEMPLATE, as_text, recommendation_prompt
    from training.evaluate.protocol import load_protocol

    protocol = load_protocol(titled_out, split="validation")
    assert protocol.candidate_titles and not load_protocol(out, split="validation").candidate_titles
    assert protocol.describe(10)["candidate_titles"] and "candidate_titles" not in load_protocol(out, split="validation").describe(10)
    u = protocol.users[0]
    prompt = recommendation_prompt(protocol, u, CANDIDATE_TEMPLATE, with_candidates=True)
    content = prompt.messages[0]["content"]
    assert content.endswith(", ".join(f"{titles[c]} {ITEM_TOKEN}" for c in protocol.candidates[u]))
    text = as_text(prompt, titles).messages[0]["content"]
    assert text.endswith("? " + ", ".join(titles[c] for c in protocol.candidates[u]))
    assert ITEM_TOKEN not in text


def test_candidate_lines_put_each_titled_candidate_on_its_own_line(built, tmp_path):
    out, _ = built
    lined_out = tmp_path / "lined"
    titles, plain, lined = build_candidate_rendering(built, lined_out, candidate_titles=True, candidate_lines=True)
    for _, b, text in candidate_prompts(plain, lined, ("train", "validation")):
        # each line starts with one candidate: its title (commas and all), then its placeholder
        listed = [line[2:].split(f" {ITEM_TOKEN}")[0] for line in text.split("\n") if line.startswith("- ")]
        assert len(listed) >= 2 and len(set(listed)) == len(listed)
        assert set(listed) <= {titles[i] for i in b["item_ids"]}
    from training.evaluate.prompts import CANDIDATE_TEMPLATE, as_text, recommendation_prompt
    from training.evaluate.protocol import load_protocol

    protocol = load_protocol(lined_out, split="validation")
    assert protocol.candidate_lines and protocol.describe(10)["candidate_lines"]
    assert "candidate_lines" not in load_protocol(out, split="validation").describe(10)  # the default protocol keeps its cache key
    u = protocol.users[0]
    prompt = recommendation_prompt(protocol, u, CANDIDATE_TEMPLATE, with_candidates=True)
    assert prompt.messages[0]["content"].endswith("next?" + "".join(f"\n- {titles[c]} {ITEM_TOKEN}" for c in protocol.candidates[u]))
    text = as_text(prompt, titles).messages[0]["content"]
    assert text.endswith("next?" + "".join(f"\n- {titles[c]}" for c in protocol.candidates[u]))


def test_candidate_tokens_first_show_each_candidate_placeholder_before_its_title(built, tmp_path):
    out, _ = built
    first_out = tmp_path / "tokens_first"
    titles, plain, first = build_candidate_rendering(built, first_out, candidate_titles=True, candidate_tokens_first=True)
    for _, b, text in candidate_prompts(plain, first, ("train", "validation")):
        shown = [i for i in b["item_ids"] if f"{ITEM_TOKEN} {titles[i]}" in text]
        assert len(shown) >= 2 and not any(f"{titles[i]} {ITEM_TOKEN}" in text for i in shown)
    from training.evaluate.prompts import CANDIDATE_TEMPLATE, as_text, recommendation_prompt
    from training.evaluate.protocol import load_protocol

    protocol = load_protocol(first_out, split="validation")
    assert protocol.candidate_tokens_first and protocol.describe(10)["candidate_tokens_first"]
    assert "candidate_tokens_first" not in load_protocol(out, split="validation").describe(10)
    u = protocol.users[0]
    prompt = recommendation_prompt(protocol, u, CANDIDATE_TEMPLATE, with_candidates=True)
    assert prompt.messages[0]["content"].endswith("? " + ", ".join(f"{ITEM_TOKEN} {titles[c]}" for c in protocol.candidates[u]))
    text = as_text(prompt, titles).messages[0]["content"]  # the text baseline sees each title once
    assert text.endswith("? " + ", ".join(titles[c] for c in protocol.candidates[u])) and ITEM_TOKEN not in text
    with pytest.raises(ValueError, match="candidate_tokens_first .* set candidate_titles=True"):
        build_generic(GENERIC, tmp_path / "bad", candidate_tokens_first=True)


def test_candidate_titles_can_follow_their_tokens_without_a_space(built, tmp_path):
    out, _ = built
    unspaced_out = tmp_path / "unspaced"
    titles, plain, unspaced = build_candidate_rendering(built, unspaced_out, candidate_titles=True, candidate_tokens_first=True, candidate_title_space=False)
    for _, b, text in candidate_prompts(plain, unspaced, ("train", "validation")):
        shown = [i for i in b["item_ids"] if f"{ITEM_TOKEN}{titles[i]}" in text]
        assert len(shown) >= 2 and not any(f"{ITEM_TOKEN} {titles[i]}" in text for i in shown)
    from training.evaluate.prompts import CANDIDATE_TEMPLATE, as_text, recommendation_prompt
    from training.evaluate.protocol import load_protocol

    protocol = load_protocol(unspaced_out, split="validation")
    assert not protocol.candidate_title_space and protocol.describe(10)["candidate_title_space"] is False
    assert "candidate_title_space" not in load_protocol(out, split="validation").describe(10)  # the default protocol keeps its cache key
    from training.evaluate.report import protocol_note

    assert f"listed to the ILM as `{ITEM_TOKEN}Heat (1995)`" in protocol_note(protocol.describe(10))  # results.md says how
    assert f"listed to the ILM as `{ITEM_TOKEN}`" in protocol_note(load_protocol(out, split="validation").describe(10))
    u = protocol.users[0]
    prompt = recommendation_prompt(protocol, u, CANDIDATE_TEMPLATE, with_candidates=True)
    assert prompt.messages[0]["content"].endswith("? " + ", ".join(f"{ITEM_TOKEN}{titles[c]}" for c in protocol.candidates[u]))
    text = as_text(prompt, titles).messages[0]["content"]  # the text baseline's prompt is the spaced build's
    assert text.endswith("? " + ", ".join(titles[c] for c in protocol.candidates[u])) and ITEM_TOKEN not in text
    with pytest.raises(ValueError, match="candidate_title_space=False .* set candidate_tokens_first=True"):
        build_generic(GENERIC, tmp_path / "bad", candidate_titles=True, candidate_title_space=False)


def test_candidates_can_show_their_titles_alone(built, tmp_path):
    out, _ = built
    titles_out = tmp_path / "titles_only"
    titles, plain, shown = build_candidate_rendering(built, titles_out, candidate_titles=True, candidate_tokens=False)
    checked = 0
    for a, b in zip(plain["validation"], shown["validation"]):
        if a["task"] != "candidate_selection":
            assert a == b
            continue
        text = b["messages"][0]["content"]
        candidates = [i for i in a["item_ids"] if i not in b["item_ids"]]  # shown without tokens, so without ids
        assert len(candidates) >= 2 and text.count(ITEM_TOKEN) == len(b["item_ids"]) == len(a["item_ids"]) - len(candidates)
        assert all(titles[i] in text for i in candidates)
        checked += 1
    assert checked
    from training.evaluate.prompts import CANDIDATE_TEMPLATE, recommendation_prompt
    from training.evaluate.protocol import load_protocol

    protocol = load_protocol(titles_out, split="validation")
    assert protocol.describe(10)["candidate_tokens"] is False
    u = protocol.users[0]
    prompt = recommendation_prompt(protocol, u, CANDIDATE_TEMPLATE, with_candidates=True)
    assert prompt.messages[0]["content"].endswith("? " + ", ".join(titles[c] for c in protocol.candidates[u]))
    assert prompt.item_ids == protocol.history(u)
    with pytest.raises(ValueError, match="set candidate_titles=True"):
        build_generic(GENERIC, tmp_path / "bad", candidate_tokens=False)


def test_train_candidate_lists_can_be_shorter_than_evaluation_ones(tmp_path):
    build_generic(GENERIC, tmp_path, candidate_titles=True, num_candidates=6, num_train_candidates=3)
    titles = {it["item_id"]: it["title"] for it in json.loads((tmp_path / "catalog.json").read_text())["items"]}
    phase2 = load_from_disk(str(tmp_path / "phase2"))
    shown = {}
    for split in ("train", "validation"):
        for row in phase2[split]:
            if row["task"] == "candidate_selection":
                text = row["messages"][0]["content"]
                shown.setdefault(split, set()).add(sum(f"{titles[i]} {ITEM_TOKEN}" in text for i in set(row["item_ids"])))
    assert shown == {"train": {3}, "validation": {6}}
    with pytest.raises(ValueError, match="num_train_candidates must be a whole number >= 2, got 1"):
        build_generic(GENERIC, tmp_path / "bad", num_train_candidates=1)


def test_titled_rendering_refuses_a_title_holding_a_placeholder():
    from training.data.templates import items, render

    facts = {"item": items("1", titled=True), "noun": "movie"}
    with pytest.raises(ValueError, match="contains a placeholder"):
        render(get_template("item_title/0"), {**facts, "title": "x"}, {"1": "Evil <item> twin"})
    with pytest.raises(ValueError, match="has no title"):
        render(get_template("item_title/0"), {**facts, "title": "x"}, {})


# --------------------------------------------------------------------------------------------- candidates


def test_candidate_files(built):
    out, _ = built
    catalog = json.loads((out / "catalog.json").read_text())
    inter = load_from_disk(str(out / "interactions"))
    consumed = {}
    for split in inter.values():
        for u, t in zip(split["user_id"], split["item_id"]):
            consumed.setdefault(u, set()).add(t)
    for split in ("validation", "test"):
        cands = load_candidates(
            out / "candidates" / f"{split}.json", item_ids=[it["item_id"] for it in catalog["items"]]
        )
        held = dict(zip(inter[split]["user_id"], inter[split]["item_id"]))
        assert set(cands) == set(held)
        for u, lst in cands.items():
            assert len(lst) == 20 and lst[0] == held[u] and not set(lst[1:]) & consumed[u]


@pytest.mark.parametrize(
    "content, error",
    [
        ("not json", "not valid JSON"),
        ("[]", "non-empty JSON object"),
        ('{"u1": ["1"]}', ">= 2 string item ids"),
        ('{"u1": ["1", 2]}', ">= 2 string item ids"),
        ('{"u1": ["1", "2", "1"]}', "duplicate candidate '1'"),
        ('{"u1": ["1", "999"]}', r"\['999'\] not in the catalog"),
    ],
)
def test_load_candidates_rejects_bad_files(tmp_path, content, error):
    path = tmp_path / "c.json"
    path.write_text(content)
    with pytest.raises(DataValidationError, match=error):
        load_candidates(path, item_ids=["1", "2", "3"])


def test_load_candidates_accepts_external_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"u1": ["1", "2", "3"], "u2": ["3", "1", "2"]}')
    assert load_candidates(path, item_ids=["1", "2", "3"]) == {"u1": ["1", "2", "3"], "u2": ["3", "1", "2"]}


# --------------------------------------------------------------------------------------------- bad input


def set_cell(column, row, value):
    def edit(df):
        df = df.copy()
        df.loc[row, column] = value
        return df

    return edit


@pytest.mark.parametrize(
    "file, edit, pattern",
    [
        (
            "interactions.csv",
            lambda df: df.drop(columns=["timestamp"]),
            r"interactions.csv: missing column\(s\) \['timestamp'\]",
        ),
        ("items.csv", lambda df: df.drop(columns=["title"]), r"items.csv: missing column\(s\) \['title'\]"),
        ("users.csv", lambda df: df.drop(columns=["user_id"]), r"users.csv: missing column\(s\) \['user_id'\]"),
        (
            "items.csv",
            set_cell("item_id", 3, "1"),
            r"items.csv: column 'item_id' has duplicate ids; 2 bad row\(s\), e.g. data row 1 .*'Harbor River",
        ),
        (
            "interactions.csv",
            set_cell("item_id", 6, "999"),
            r"interactions.csv: column 'item_id' names items not in the items table .*data row 7 .*'999'",
        ),
        (
            "interactions.csv",
            set_cell("user_id", 6, "nobody"),
            r"interactions.csv: column 'user_id' names users not in the users table .*'nobody'",
        ),
        (
            "interactions.csv",
            set_cell("timestamp", 4, "yesterday"),
            r"interactions.csv: column 'timestamp' has non-numeric values; 1 bad row\(s\), e.g. data row 5 .*'yesterday'",
        ),
        (
            "interactions.csv",
            set_cell("timestamp", 4, ""),
            r"interactions.csv: column 'timestamp' has missing values; .*data row 5",
        ),
        ("interactions.csv", set_cell("timestamp", 4, "500.5"), r"column 'timestamp' has non-integer values"),
        (
            "interactions.csv",
            set_cell("rating", 2, "great"),
            r"interactions.csv: column 'rating' has non-numeric values; .*data row 3 .*'great'",
        ),
        ("interactions.csv", lambda df: df.iloc[:0], r"interactions.csv: table is empty"),
        ("items.csv", lambda df: df.iloc[:0], r"items.csv: table is empty"),
        (
            "items.csv",
            set_cell("title", 0, "A <item> story"),
            r"items.csv: column 'title' contains the reserved strings",
        ),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, file, edit, pattern):
    src = copy_generic(tmp_path / "src", **{file: edit})
    with pytest.raises(DataValidationError, match=pattern):
        build_generic(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_missing_ratings_and_titles_are_dropped_and_counted(tmp_path):
    def blank_ratings(df):
        df = df.copy()
        df.loc[[0, 5], "rating"] = ""  # u1's first and sixth interactions
        return df

    src = copy_generic(tmp_path / "src", **{"interactions.csv": blank_ratings, "items.csv": set_cell("title", 13, "")})
    stats = build_generic(src, tmp_path / "out")
    assert stats["dropped"] == {
        "items_missing_title": 1,
        "interactions_missing_id": 0,
        "interactions_missing_rating": 2,
        "interactions_of_items_missing_title": 1,
    }
    assert stats["counts"]["interactions"] == 35 - 3 and stats["counts"]["items"] == 29
    ratings = load_from_disk(str(tmp_path / "out" / "interactions"))["train"]["rating"]
    assert not np.isnan(ratings).any()


def test_without_ratings_or_users(tmp_path):
    src = copy_generic(tmp_path / "src", **{"interactions.csv": lambda df: df.drop(columns=["rating"])})
    stats = build_generic(src, tmp_path / "out", users=False)
    assert stats["counts"]["has_ratings"] is False and stats["counts"]["users"] == 7  # users come from interactions
    assert stats["phase2"]["user_rating"]["train"] == 0 and stats["phase2"]["user_profile"]["train"] == 0
    assert stats["phase2"]["conversation"]["train"] > 0  # every interaction counts as liked
    ratings = load_from_disk(str(tmp_path / "out" / "interactions"))["train"]["rating"]
    assert set(ratings) == {1.0}


def test_parquet_input_matches_csv(tmp_path, built):
    src = tmp_path / "pq"
    src.mkdir()
    inter = pd.read_csv(GENERIC / "interactions.csv", dtype={"item_id": str})  # numeric user-facing columns
    inter.to_parquet(src / "interactions.parquet")
    for name in ("items", "users"):
        pd.read_csv(GENERIC / f"{name}.csv", dtype=str, keep_default_na=False).to_parquet(src / f"{name}.parquet")
    build_dataset(
        tmp_path / "out",
        interactions=src / "interactions.parquet",
        items=src / "items.parquet",
        users=src / "users.parquet",
        **FAST,
    )
    for name in ("interactions", "phase1", "phase2"):
        a, b = load_from_disk(str(built[0] / name)), load_from_disk(str(tmp_path / "out" / name))
        for split in a:
            assert a[split].to_dict() == b[split].to_dict(), (name, split)


# --------------------------------------------------------------------------------------------- build


def test_build_is_deterministic(tmp_path, built):
    stats = build_generic(GENERIC, tmp_path / "again")
    drop = lambda s: {k: v for k, v in s.items() if k not in ("out", "build_seconds")}
    assert drop(stats) == drop(built[1])
    for name in ("interactions", "phase1", "phase2"):
        a, b = load_from_disk(str(built[0] / name)), load_from_disk(str(tmp_path / "again" / name))
        for split in a:
            assert a[split].to_dict() == b[split].to_dict(), (name, split)
    for name in ("catalog.json", "candidates/validation.json", "candidates/test.json", "cf/id_maps.json"):
        assert (built[0] / name).read_text() == (tmp_path / "again" / name).read_text()
    x, y = (load_file(str(p / "cf" / "embeddings.safetensors")) for p in (built[0], tmp_path / "again"))
    np.testing.assert_array_equal(x["item_embeddings"], y["item_embeddings"])
    # another seed changes the sampled parts
    other = build_generic(GENERIC, tmp_path / "seed1", seed=1)
    assert other["phase1"]["item_text_validation"] == 3
    assert (tmp_path / "seed1" / "candidates" / "test.json").read_text() != (
        built[0] / "candidates" / "test.json"
    ).read_text()


def test_out_folder_safety(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        build_generic(GENERIC, tmp_path / "busy")
    # rebuilding over an earlier build replaces it
    build_generic(GENERIC, tmp_path / "out")
    (tmp_path / "out" / "mine.txt").write_text("not ours")
    build_generic(GENERIC, tmp_path / "out", seed=3)
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["config"]["seed"] == 3
    assert (tmp_path / "out" / "mine.txt").exists()


def test_a_read_only_output_folder_is_named(tmp_path, monkeypatch):
    """Permissions do not bind root (these tests may run as root), so the refusal is simulated where the
    build creates its folder: the error names the folder and the fix, and nothing is left behind."""
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self.parent == tmp_path / "locked":
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    (tmp_path / "locked").mkdir()
    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(OSError, match=r"locked/out\.partial: cannot create the build folder \(Permission denied\); choose another --out"):
        build_generic(GENERIC, tmp_path / "locked" / "out")
    assert list((tmp_path / "locked").iterdir()) == []


def test_cli_generic(tmp_path, capsys):
    cli_main(
        [
            "build",
            "--interactions",
            str(GENERIC / "interactions.csv"),
            "--items",
            str(GENERIC / "items.csv"),
            "--out",
            str(tmp_path / "out"),
            "--cf-dim",
            "4",
            "--cf-iterations",
            "2",
            "--max-train-per-task",
            "all",
        ]
    )
    printed = capsys.readouterr().out
    assert "phase2 task" in printed and "conversation" in printed
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["config"]["cf_dim"] == 4 and stats["config"]["max_train_per_task"] is None
    with pytest.raises(SystemExit, match="error: .*missing.csv: no such file"):
        cli_main(
            [
                "build",
                "--interactions",
                str(tmp_path / "missing.csv"),
                "--items",
                str(GENERIC / "items.csv"),
                "--out",
                str(tmp_path / "o2"),
            ]
        )


@pytest.mark.slow
def test_a_user_with_a_million_interactions_builds(tmp_path):
    """One user with 1e6 interactions beside the fixture's: the build completes (train examples take
    only the history they show, so a long sequence costs linearly) and that user's examples hold the
    right items: the 10 before the target, and liked items only as liked ones."""
    n = 1_000_000
    cycle = pd.read_csv(GENERIC / "items.csv", dtype=str)["item_id"].tolist()  # her items, in this order, again and again
    position = {item: i for i, item in enumerate(cycle)}

    def add_heavy_user(df):  # items at even places of the cycle rated 5 (liked), the others 2
        place = np.arange(n) % len(cycle)
        heavy = pd.DataFrame({"user_id": "heavy", "item_id": np.array(cycle)[place], "rating": np.where(place % 2 == 0, "5", "2"),
                              "timestamp": (np.arange(n) + 10_000).astype(str)})
        return pd.concat([df, heavy], ignore_index=True)

    src = copy_generic(tmp_path / "src", **{"interactions.csv": add_heavy_user})
    stats = build_generic(src, tmp_path / "out", users=False)
    assert stats["counts"]["interactions"] == 35 + n
    train = load_from_disk(str(tmp_path / "out" / "phase2" / "train"))
    histories = [row for row in train if row["task"] == "next_item_title" and len(row["item_ids"]) == 10]  # only hers are this long
    assert len(histories) > 1000
    for row in histories:
        places = [position[i] for i in row["item_ids"] + [row["target_item_id"]]]
        assert all(b == (a + 1) % len(cycle) for a, b in zip(places, places[1:])), places  # consecutive, ending before the target
    liked = [row for row in train if row["task"] == "conversation" and row["user_ids"] == ["heavy"]]
    assert liked and all(position[i] % 2 == 0 for row in liked for i in row["item_ids"])


@pytest.mark.slow
def test_ml100k_build(tmp_path):
    stats = build_dataset(tmp_path / "ml100k")
    assert stats["counts"]["users"] == 943 and stats["counts"]["items"] == 1681  # item 267 has no title
    assert stats["counts"]["interactions"] == 100_000 - stats["dropped"]["interactions_of_items_missing_title"]
    assert stats["splits"]["users_evaluated"] == 943
    assert stats["cf"]["als_eval"]["validation"]["hr@10"] > 0.5  # far above the 0.5 of random ranking
    catalog = json.loads((tmp_path / "ml100k" / "catalog.json").read_text())
    assert catalog["items"][0]["text"] == "Toy Story (1995). Genres: Animation, Children's, Comedy."
