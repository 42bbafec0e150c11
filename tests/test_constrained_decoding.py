"""Title-constrained decoding: every greedy / beam / sampled answer is one allowed title + end-of-turn.

The tiny tokenizer is a lower-case WordLevel vocab, so tiny.py's CATALOG titles ("Toy Story (1995)")
are mostly `<unk>` and five of them tokenize identically. The model tests use a catalog of
lower-case titles whose tokenizations differ and share prefixes ("toy story 1995" / "toy story 2",
"heat" / "heat 1995").
"""

import copy
import json

import pytest
import torch
from tiny import CATALOG, make_tokenizer
from transformers import LogitsProcessorList

from modeling_ilm import ILMForConditionalGeneration, ILMProcessor
from modeling_ilm import ILMPipeline
from modeling_ilm.constrained_decoding import TitleConstrainedLogitsProcessor, TitleTrie, title_constraint

QUERIES = 2
TITLES = ["toy story 1995", "toy story 2", "heat", "heat 1995", "casino 1996", "babe"]
TEST_CATALOG = {
    "items": [{"item_id": str(i), "title": title} for i, title in enumerate(TITLES, 1)],
    "users": CATALOG["users"],
}
CHATS = [
    [{"role": "user", "content": "what movie is <item> ?"}],
    [{"role": "user", "content": "a user liked <item> and <item> . recommend a comedy"}],
    [{"role": "user", "content": "hello world , my name is"}],
]
ITEMS = [["1"], ["2", "3"], []]
CANDIDATES = [["1", "5", "6"], ["2", "3", "4"], ["4", "6", "1"]]


@pytest.fixture(scope="module")
def processor(tiny_components):
    return ILMProcessor.from_components(tiny_components["llm"], catalog=TEST_CATALOG, num_query_tokens=QUERIES)


@pytest.fixture(scope="module")
def model(tiny_components, processor):
    torch.manual_seed(0)
    return ILMForConditionalGeneration.from_components(
        tiny_components["llm"],
        tiny_components["bert"],
        item_token_id=processor.item_token_id,
        user_token_id=processor.user_token_id,
        num_query_tokens=QUERIES,
        item_embeddings=torch.randn(6, 8),
        user_embeddings=torch.randn(4, 8),
    ).eval()


@pytest.fixture(scope="module")
def batch(processor):
    batch = processor(messages=CHATS, item_ids=ITEMS)
    assert (batch["attention_mask"][:, 0] == 0).any()  # left-padded for real
    return batch


def ids_of(tokenizer, title):
    return tokenizer(title, add_special_tokens=False)["input_ids"]


def answers(processor, generated, prompt_length):
    """Each row's answer up to and including the first eos, and what follows it."""
    eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    out = []
    for row in generated[:, prompt_length:].tolist():
        end = row.index(eos) + 1 if eos in row else len(row)
        out.append((row[:end], row[end:]))
    return out


def titled(processor, item_ids):
    """{tuple(title ids + eos): title} for the given items."""
    eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    return {tuple(ids_of(processor.tokenizer, processor.item(i)["title"]) + [eos]): processor.item(i)["title"] for i in item_ids}


# --- the trie -------------------------------------------------------------------------------------


def test_trie_branches_on_shared_prefixes_and_ends_with_eos_only_after_a_full_title():
    tok = make_tokenizer()
    eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), 3  # a pad distinct from eos, to see both
    trie = TitleTrie(tok, ["toy story 1995", "toy story 2", "heat", "heat 1995"], eos, pad_token_id=pad)
    toy, story, n1995, two, heat = (tok.convert_tokens_to_ids(w) for w in ["toy", "story", "1995", "2", "heat"])
    assert sorted(trie.allowed([])) == sorted([toy, heat])
    assert trie.allowed([toy]) == [story]  # shared prefix: a single path ...
    assert sorted(trie.allowed([toy, story])) == sorted([n1995, two])  # ... that branches here
    assert eos not in trie.allowed([toy, story])  # "toy story" is not a title
    assert trie.allowed([toy, story, two]) == [eos]
    assert sorted(trie.allowed([heat])) == sorted([eos, n1995])  # "heat" is complete, "heat 1995" goes on
    assert trie.allowed([heat, n1995]) == [eos]
    # finished: only eos / pad, however many have been appended
    for finished in ([heat, eos], [toy, story, two, eos], [heat, eos, pad, pad], [heat, eos, eos]):
        assert sorted(trie.allowed(finished)) == sorted([eos, pad])
    assert sorted(trie.allowed(torch.tensor([heat, n1995, eos]))) == sorted([eos, pad])  # tensors too
    assert sorted(trie.allowed([story])) == sorted([eos, pad])  # off the trie: close the row
    assert trie.sequences[1] == [toy, story, two, eos]


def test_duplicate_titles_share_one_path():
    tok = make_tokenizer()
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    titles = [item["title"] for item in CATALOG["items"]]  # 5 of 6 tokenize to the same <unk> ids
    trie = TitleTrie(tok, titles, eos)
    assert len(trie) == 6 and len({tuple(s) for s in trie.sequences}) == 2
    unk, n1995 = tok.unk_token_id, tok.convert_tokens_to_ids("1995")
    assert trie.allowed([]) == [unk]
    assert sorted(trie.allowed([unk, unk])) == sorted([unk, n1995])
    assert trie.allowed([unk, unk, n1995, unk]) == [eos]


def test_processor_masks_each_row_with_its_own_trie_and_beam_rows_follow_their_example():
    tok = make_tokenizer()
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    tries = [TitleTrie(tok, ["heat"], eos), TitleTrie(tok, ["babe", "toy"], eos)]
    heat, babe, toy = (tok.convert_tokens_to_ids(w) for w in ["heat", "babe", "toy"])
    lp = TitleConstrainedLogitsProcessor(tries, prompt_length=2)
    prompt = torch.tensor([[5, 6]]).repeat(4, 1)  # 2 examples x 2 beams: rows 0,1 -> trie 0; 2,3 -> trie 1
    scores = lp(torch.cat([prompt, torch.tensor([[heat], [heat], [babe], [4]])], 1), torch.zeros(4, len(tok)))
    allowed = [set(torch.isfinite(row).nonzero().flatten().tolist()) for row in scores]
    assert allowed == [{eos}, {eos}, {eos}, {eos}]  # [4] is off trie 1: closed
    scores = lp(prompt, torch.randn(4, len(tok)))
    allowed = [set(torch.isfinite(row).nonzero().flatten().tolist()) for row in scores]
    assert allowed == [{heat}, {heat}, {babe, toy}, {babe, toy}]
    with pytest.raises(ValueError, match="cannot be split"):
        lp(torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, len(tok)))


# --- generation -----------------------------------------------------------------------------------


def test_unconstrained_random_model_does_not_name_titles(model, processor, batch):
    out = model.generate(**batch, max_new_tokens=6, do_sample=False)
    allowed = titled(processor, [i["item_id"] for i in TEST_CATALOG["items"]])
    named = [tuple(answer) in allowed for answer, _ in answers(processor, out, batch["input_ids"].shape[1])]
    assert not any(named)


def test_greedy_whole_catalog_answers_are_titles(model, processor, batch):
    constraint = title_constraint(processor, batch["input_ids"])
    assert isinstance(constraint, LogitsProcessorList)
    out = model.generate(**batch, max_new_tokens=8, do_sample=False, logits_processor=constraint)
    allowed = titled(processor, [i["item_id"] for i in TEST_CATALOG["items"]])
    pad = processor.tokenizer.pad_token_id
    for answer, rest in answers(processor, out, batch["input_ids"].shape[1]):
        assert tuple(answer) in allowed, processor.tokenizer.decode(answer)
        assert all(t == pad for t in rest)
    decoded = processor.batch_decode(out[:, batch["input_ids"].shape[1]:])
    assert all(text in TITLES for text in decoded)


def test_greedy_per_row_candidates(model, processor, batch):
    constraint = title_constraint(processor, batch["input_ids"], candidates=CANDIDATES)
    out = model.generate(**batch, max_new_tokens=8, do_sample=False, logits_processor=constraint)
    got = answers(processor, out, batch["input_ids"].shape[1])
    for row, (answer, _) in enumerate(got):
        assert tuple(answer) in titled(processor, CANDIDATES[row])
    # a row whose single candidate is forced answers exactly that title
    forced = title_constraint(processor, batch["input_ids"], candidates=[["5"], ["6"], ["2"]])
    out = model.generate(**batch, max_new_tokens=8, do_sample=False, logits_processor=forced)
    texts = processor.batch_decode(out[:, batch["input_ids"].shape[1]:])
    assert texts == ["casino 1996", "babe", "toy story 2"]
    with pytest.raises(ValueError, match="candidate lists"):
        title_constraint(processor, batch["input_ids"], candidates=CANDIDATES[:2])


def test_beam_search_yields_only_allowed_titles(model, processor, batch):
    prompt_length = batch["input_ids"].shape[1]
    constraint = title_constraint(processor, batch["input_ids"])
    out = model.generate(
        **batch, max_new_tokens=8, num_beams=3, num_return_sequences=3, do_sample=False, logits_processor=constraint
    )
    assert out.shape[0] == 9
    allowed = titled(processor, [i["item_id"] for i in TEST_CATALOG["items"]])
    got = answers(processor, out, prompt_length)
    assert all(tuple(answer) in allowed for answer, _ in got)
    for b in range(3):  # the 3 beams of an example: 3 different titles, a top-3 recommendation
        assert len({tuple(answer) for answer, _ in got[3 * b: 3 * b + 3]}) == 3

    constraint = title_constraint(processor, batch["input_ids"], candidates=CANDIDATES)
    out = model.generate(
        **batch, max_new_tokens=8, num_beams=3, num_return_sequences=3, do_sample=False, logits_processor=constraint
    )
    got = answers(processor, out, prompt_length)
    for b in range(3):
        beams = {tuple(answer) for answer, _ in got[3 * b: 3 * b + 3]}
        assert beams == set(titled(processor, CANDIDATES[b]))  # 3 beams over 3 candidates: all of them


def test_sampling_yields_only_allowed_titles(model, processor, batch):
    constraint = title_constraint(processor, batch["input_ids"], candidates=CANDIDATES)
    torch.manual_seed(0)
    out = model.generate(
        **batch, max_new_tokens=8, do_sample=True, temperature=1.5, num_return_sequences=4, logits_processor=constraint
    )
    got = answers(processor, out, batch["input_ids"].shape[1])
    assert len(got) == 12
    for row, (answer, _) in enumerate(got):
        assert tuple(answer) in titled(processor, CANDIDATES[row // 4])


def test_whole_catalog_trie_is_built_once_and_reused(processor, batch):
    first = title_constraint(processor, batch["input_ids"])[0]
    second = title_constraint(processor, batch["input_ids"][:1])[0]
    assert first.shared and second.shared
    assert first.tries[0] is second.tries[0]
    assert second.prompt_length == batch["input_ids"].shape[1]
    assert len(first.tries[0]) == len(TEST_CATALOG["items"])
    assert list(processor._title_tries) == [processor.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    per_row = title_constraint(processor, batch["input_ids"], candidates=CANDIDATES)[0]
    assert not per_row.shared and all(t is not first.tries[0] for t in per_row.tries)
    # the cache neither leaks into the saved processor config nor gets copied
    assert "_title_tries" not in json.loads(processor.to_json_string())
    assert copy.deepcopy(first.tries[0]) is first.tries[0]


def test_scores_guide_greedy_decoding_to_the_best_scored_title_through_shared_prefixes(model, processor, batch):
    """With each candidate's score (the ranking head's, say) large against the LLM's token scores,
    greedy decoding spells out the best-scored candidate, even where titles share a prefix
    ("heat" / "heat 1995", "toy story 1995" / "toy story 2"); small scores leave the LLM's own choice."""
    candidates = [["1", "2", "3"], ["3", "4", "2"], ["4", "3", "1"]]
    for best in range(3):
        scores = torch.zeros(3, 3)
        scores[:, best] = 1.0
        constraint = processor.title_constraint(batch["input_ids"], candidates, scores=scores, score_weight=1000.0)
        out = model.generate(**batch, max_new_tokens=8, do_sample=False, logits_processor=constraint)
        for row, (answer, _) in enumerate(answers(processor, out, batch["input_ids"].shape[1])):
            assert processor.tokenizer.decode(answer, skip_special_tokens=True) == processor.item(candidates[row][best])["title"]
    plain = model.generate(**batch, max_new_tokens=8, do_sample=False, logits_processor=processor.title_constraint(batch["input_ids"], candidates))
    faint = processor.title_constraint(batch["input_ids"], candidates, scores=torch.rand(3, 3), score_weight=1e-6)
    assert torch.equal(model.generate(**batch, max_new_tokens=8, do_sample=False, logits_processor=faint), plain)


def test_best_continuation_takes_the_best_title_still_reachable():
    tokenizer = make_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    trie = TitleTrie(tokenizer, ["heat", "heat 1995", "babe"], eos)
    heat, year, babe = (ids_of(tokenizer, w)[0] for w in ("heat", "1995", "babe"))
    scores = torch.tensor([0.1, 0.7, 0.3])
    assert trie.best_continuation([], scores) == pytest.approx({heat: 0.7, babe: 0.3})
    assert trie.best_continuation([heat], scores) == pytest.approx({eos: 0.1, year: 0.7})  # stop at "heat", or go on
    with pytest.raises(ValueError, match="one score per title"):
        TitleConstrainedLogitsProcessor([trie], 0, title_scores=[torch.zeros(2)])


def test_pipeline_answers_name_catalog_items(model, processor):
    """ILMPipeline (what `pipeline("text-generation", ..., trust_remote_code=True)` builds for a saved
    folder): free answers are matched to the catalog afterwards; `recommend` and `candidates` decode
    among titles, so the answer is an item, never one the prompt already holds."""
    pipe = ILMPipeline(model=model, processor=processor)
    free = pipe(CHATS[1], item_ids=ITEMS[1], max_new_tokens=6)
    one = processor(messages=CHATS[1], item_ids=ITEMS[1])
    expected = processor.decode(model.generate(**one, max_new_tokens=6, do_sample=False)[0, one["input_ids"].shape[1] :]).strip()
    assert free["generated_text"] == expected and free["item_id"] == processor.match_item(expected)
    for scorer in (False, True):
        if scorer:
            model.enable_ranking_head(ranking_dim=8)
        try:
            rec = pipe(CHATS[1], item_ids=ITEMS[1], recommend=True)
            assert rec["item_id"] not in (None, *ITEMS[1]) and rec["title"] == rec["generated_text"], rec
            among = pipe(CHATS[1], item_ids=ITEMS[1], candidates=CANDIDATES[0])
            assert among["item_id"] in CANDIDATES[0] and among["title"] == among["generated_text"], among
        finally:
            model.item_scorer, model.config.ranking_head = None, False
    several = pipe([{"messages": chat, "item_ids": ids} for chat, ids in zip(CHATS, ITEMS)], recommend=True)
    assert len(several) == 3 and all(r["item_id"] is not None for r in several)
    with pytest.raises(ValueError, match="'messages' and optionally 'item_ids', 'user_ids'"):
        pipe({"chat": CHATS[0], "item_ids": ITEMS[0]})
