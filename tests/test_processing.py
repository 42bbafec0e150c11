"""ILMProcessor: expansion, ids, labels, errors at the boundary, save/load, title matching."""

import pytest
import torch
from conftest import CATALOG
from transformers import AutoProcessor

from modeling_ilm import ILMProcessor

QUERIES = 3


@pytest.fixture(scope="module")
def processor(tiny_components):
    return ILMProcessor.from_components(tiny_components["llm"], catalog=CATALOG, num_query_tokens=QUERIES)


def test_placeholders_expand_to_query_tokens_and_ids_map_to_table_rows(processor):
    out = processor(messages=[{"role": "user", "content": "user <user> liked <item> and <item> ."}], item_ids=["3", 5], user_ids=["2"])
    ids = out["input_ids"][0]
    assert (ids == processor.item_token_id).sum() == 2 * QUERIES
    assert (ids == processor.user_token_id).sum() == QUERIES
    assert out["item_ids"].tolist() == [[2, 4]]  # catalog rows, ints accepted as ids
    assert out["user_ids"].tolist() == [[1]]
    tokens = processor.tokenizer.convert_ids_to_tokens(ids)
    assert tokens[-2:] == ["<|im_start|>", "assistant"]  # generation prompt from the chat template
    first = tokens.index("<item>")
    assert tokens[first : first + QUERIES] == ["<item>"] * QUERIES


def test_batch_pads_left_and_pads_ids_with_minus_one(processor):
    out = processor(text=["what movie is <item> ?", "<item> <item> <item>"], item_ids=[["1"], ["1", "2", "3"]])
    assert out["attention_mask"][0, 0] == 0 and out["attention_mask"][1, 0] == 1
    assert out["item_ids"].tolist() == [[0, -1, -1], [0, 1, 2]]
    assert "user_ids" not in out


def test_labels_cover_every_assistant_turn_only(processor):
    chat = [
        {"role": "user", "content": "liked <item> . recommend a comedy"},
        {"role": "assistant", "content": "babe"},
        {"role": "user", "content": "a drama ?"},
        {"role": "assistant", "content": "heat"},
    ]
    out = processor(messages=chat, item_ids=["1"], return_labels=True, add_generation_prompt=False)
    labelled = processor.tokenizer.convert_ids_to_tokens(out["input_ids"][0][out["labels"][0] != -100])
    assert labelled == ["babe", "<|im_end|>", "heat", "<|im_end|>"]


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"text": "what movie is <item> ?", "item_ids": ["99"]}, KeyError, "not in the catalog"),
        ({"text": "what movie is <item> ?", "item_ids": ["1", "2"]}, ValueError, "1 <item> placeholders but 2"),
        ({"text": "what movie is <item> ?"}, ValueError, "1 <item> placeholders but 0"),
        ({"text": "what movie is <item> ?", "item_ids": [1.5]}, TypeError, "has type float"),
        ({"text": "what movie is <item> ?", "item_ids": "1"}, TypeError, "list of ids"),
        ({"text": ["a <item>", "b"], "item_ids": [["1"]]}, ValueError, "2 examples but 1"),
        ({"messages": [{"role": "user"}]}, ValueError, "'role' and 'content'"),
        ({"text": "x", "messages": []}, ValueError, "exactly one"),
        ({"messages": [{"role": "user", "content": "hi"}], "return_labels": True}, ValueError, "assistant"),
    ],
)
def test_bad_input_is_a_clear_error(processor, kwargs, error, message):
    with pytest.raises(error, match=message):
        processor(**kwargs)


def test_save_load_round_trip_keeps_catalog_and_tokens(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is ILMProcessor
    assert loaded.catalog == CATALOG and loaded.num_query_tokens == QUERIES
    assert loaded.item_token_id == processor.item_token_id
    chat = [{"role": "user", "content": "user <user> liked <item> ."}]
    a, b = processor(messages=chat, item_ids=["2"], user_ids=["1"]), loaded(messages=chat, item_ids=["2"], user_ids=["1"])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_titles_map_back_to_catalog_ids(processor):
    assert processor.match_item("Toy Story (1995)") == "1"
    assert processor.match_item("  toy story 1995. ") == "1"
    assert processor.match_item("Jumanj (1995)") == "2"  # close enough
    assert processor.match_item("The Godfather") is None
    assert processor.match_item("Heat (1995)", candidates=["1", "2"]) is None
    assert processor.match_item("Heat (1995)", candidates=["1", "3"]) == "3"
