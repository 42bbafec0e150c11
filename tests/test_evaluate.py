"""Evaluation harness (training/evaluate) on a tiny synthetic data build and a tiny random ILM."""

import copy
import dataclasses
import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tiny import WORDS
from datasets import load_from_disk
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM, BertModel, BertTokenizerFast

from modeling_ilm import ILMForConditionalGeneration, ILMProcessor
from training import assets
from training.data import DataValidationError, build_dataset
from training.data.templates import ITEM_TOKEN, USER_TOKEN
from training.evaluate import evaluate_baselines, evaluate_model, load_protocol, merge_results, to_markdown, write_report
from training.evaluate import cache
from training.evaluate.__main__ import main as cli_main
from training.evaluate.alignment import SentenceEmbedder, alignment_section, first_year, load_alignment_rows
from training.evaluate.baselines import als_scorer, popularity_scorer
from training.evaluate.harness import LLM_SECTIONS, SECTIONS, llm_sections
from training.evaluate.lm import ChatModel, ScoredAnswers, content_free_prompt, follow_answers, match_answer
from training.evaluate.metrics import bootstrap_ci, per_example, summarize
from training.evaluate.preservation import max_logit_difference
from training.evaluate.prompts import CANDIDATE_TEMPLATE, NEXT_ITEM_TEMPLATE, as_text, recommendation_prompt, text_processor
from training.evaluate.protocol import display_order, select_users
from training.evaluate.recommendation import LikelihoodScores, generation_section, likelihood_scorer, ranking_section

# titles made of words of the tiny tokenizer, so every title tokenizes differently
TITLES = ["toy story", "heat", "casino", "babe", "jumanji", "sabrina", "hello world", "my name", "comedy", "drama", "a movie", "the title"]
NUM_USERS, PER_USER, NUM_CANDIDATES = 6, 7, 5
QUERIES = 2


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """The text baseline's disk cache of every test lives in the test's own folder, never in ~/.cache."""
    folder = tmp_path / "ilm-cache"
    monkeypatch.setenv("ILM_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    src = tmp_path_factory.mktemp("tiny_src")
    items = pd.DataFrame({
        "item_id": [str(i) for i in range(1, len(TITLES) + 1)],
        "title": TITLES,
        "genres": ["Comedy|Drama" if i % 2 else "Drama" for i in range(len(TITLES))],
        "year": [1990 + i for i in range(len(TITLES))],
    })
    rows = [
        (f"u{u}", str((u * 5 + 3 * j) % len(TITLES) + 1), 1 + (u + j) % 5, 100 * j + u)
        for u in range(1, NUM_USERS + 1) for j in range(PER_USER)
    ]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    items.to_csv(src / "items.csv", index=False)
    inter.to_csv(src / "interactions.csv", index=False)
    out = tmp_path_factory.mktemp("tiny_data") / "data"
    build_dataset(out, interactions=src / "interactions.csv", items=src / "items.csv", cf_dim=8, cf_iterations=3,
                  num_candidates=NUM_CANDIDATES, holdout_frac=0.25)
    return out


@pytest.fixture(scope="module")
def ilm(tiny_components, data_dir):
    catalog = json.loads((data_dir / "catalog.json").read_text())
    cf = load_file(str(data_dir / "cf" / "embeddings.safetensors"))
    processor = ILMProcessor.from_components(tiny_components["llm"], catalog=catalog, num_query_tokens=QUERIES)
    torch.manual_seed(0)
    model = ILMForConditionalGeneration.from_components(
        tiny_components["llm"], tiny_components["bert"], item_token_id=processor.item_token_id,
        user_token_id=processor.user_token_id, num_query_tokens=QUERIES,
        item_embeddings=torch.from_numpy(cf["item_embeddings"]), user_embeddings=torch.from_numpy(cf["user_embeddings"]),
    ).eval()
    return model, processor


@pytest.fixture(scope="module")
def sentence_model(tiny_components, tmp_path_factory):
    """The tiny BERT with a word-level vocabulary: a stand-in for MiniLM."""
    folder = tmp_path_factory.mktemp("sbert")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(WORDS)]))
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    BertModel.from_pretrained(tiny_components["bert"]).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def protocol(data_dir):
    return load_protocol(data_dir, split="test", seed=0)


# --------------------------------------------------------------------------------------------- metrics


def test_ranking_metric_by_hand():
    scores = [
        [0.2, 0.9, 0.1],  # true 0.9 is best: rank 0
        [0.5, 0.4, 0.9, 0.1, 0.3],  # 0.5 and 0.9 beat 0.4: rank 2
        [0.3, 0.3],  # a tie counts against the true item: rank 1
        [0.0, 1, 2, 3, 4, 5, 6],  # rank 6, outside the top 5
    ]
    truth = [1, 1, 0, 0]
    values = per_example("ranking", scores, truth, k=[1, 5])
    assert values["hr@1"].tolist() == [1, 0, 0, 0]
    expected_ndcg = [1.0, 1 / math.log2(4), 1 / math.log2(3), 0.0]
    np.testing.assert_allclose(values["ndcg@5"], expected_ndcg)
    assert values["hr@5"].tolist() == [1, 1, 1, 0]
    # the same lists in another order give the same values
    perm = [np.random.default_rng(i).permutation(len(s)) for i, s in enumerate(scores)]
    shuffled = [[s[j] for j in p] for s, p in zip(scores, perm)]
    moved = [int(np.where(p == t)[0][0]) for p, t in zip(perm, truth)]
    again = per_example("ranking", shuffled, moved, k=[1, 5])
    np.testing.assert_allclose(again["ndcg@5"], expected_ndcg)
    assert per_example("ranking", [[float("nan"), 0.1]], [0], k=[1])["hr@1"].tolist() == [0]  # a failed score is a miss


def test_choice_exact_and_set_f1_metrics_by_hand():
    values = per_example("choice", ["a", "", "c", "x"], ["a", "b", "d", "x"])
    assert values["valid_ratio"].mean() == 0.75 and values["hr@1"].mean() == 0.5
    assert np.nanmean(values["hr@1_valid"]) == pytest.approx(2 / 3) and np.isnan(values["hr@1_valid"][1])
    assert per_example("exact_match", ["heat", "babe"], ["heat", "casino"])["exact_match"].tolist() == [1, 0]
    f1 = per_example("set_f1", ["Comedy, Drama", "drama", ""], ["drama, Horror", "Drama", "Drama"])["f1"]
    np.testing.assert_allclose(f1, [0.5, 1.0, 0.0])
    assert [first_year(t) for t in ["It came out in 1995.", "in the 90s", "1995-1996"]] == ["1995", "", "1995"]


def test_bootstrap_ci():
    assert bootstrap_ci(np.full(50, 0.7), 500, seed=0) == [pytest.approx(0.7), pytest.approx(0.7)]  # zero width
    sample = (np.random.default_rng(1).random(1000) < 0.3).astype(float)
    lo, hi = bootstrap_ci(sample, 2000, seed=0)
    mean, se = sample.mean(), sample.std() / math.sqrt(len(sample))
    assert lo < mean < hi
    # a mean of 1000 draws is close to normal: the percentile CI is about mean +- 1.96 standard errors
    assert lo == pytest.approx(mean - 1.96 * se, abs=0.002) and hi == pytest.approx(mean + 1.96 * se, abs=0.002)
    assert bootstrap_ci(sample, 2000, seed=0) == [lo, hi] and bootstrap_ci(sample, 2000, seed=1) != [lo, hi]
    with_nan = np.array([1.0, np.nan, 0.0, np.nan, 1.0])
    assert summarize(with_nan, 200)["value"] == pytest.approx(2 / 3)
    assert summarize(sample, 0) == {"value": pytest.approx(mean), "ci95": None}


# --------------------------------------------------------------------------------------------- protocol


def test_users_display_order_and_histories(data_dir, protocol):
    assert select_users(["10", "2", "b", "1", "a"], 4) == ["1", "2", "10", "a"]
    rows = json.loads((data_dir / "candidates" / "test.json").read_text())
    assert protocol.users == select_users(rows) and len(protocol.users) == NUM_USERS
    for u in protocol.users:
        assert protocol.targets[u] == rows[u][0] and sorted(protocol.candidates[u]) == sorted(rows[u])
        assert display_order(u, rows[u][::-1], 0) == protocol.candidates[u]  # the file's order does not matter
    positions = {protocol.candidates[u].index(protocol.targets[u]) for u in protocol.users}
    assert len(positions) > 1  # the true item is not always shown in the same place
    assert any(display_order(u, rows[u], 1) != protocol.candidates[u] for u in protocol.users)
    # the histories are those the data build used for its own next-item / candidate test examples
    checked = 0
    for row in load_from_disk(str(data_dir / "phase2" / "test")):
        if row["task"] in ("next_item_title", "candidate_selection") and row["user_ids"]:
            u = row["user_ids"][0]
            assert row["item_ids"][: len(protocol.history(u))] == protocol.history(u)
            assert protocol.targets[u] == row["target_item_id"]
            checked += 1
    assert checked
    train_seq = load_from_disk(str(data_dir / "interactions" / "train")).to_pandas().groupby("user_id")["item_id"].agg(list)
    validation = load_from_disk(str(data_dir / "interactions" / "validation")).to_pandas().set_index("user_id")["item_id"]
    u = protocol.users[0]
    assert protocol.histories[u] == train_seq[u] + [validation[u]]  # test history = train + validation
    assert load_protocol(data_dir, split="validation").histories[u] == train_seq[u]


def test_history_length_follows_the_data_build_unless_given(data_dir, tmp_path):
    """Evaluation prompts show as many history items as the build's phase-2 prompts did."""
    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    stats = json.loads((copy / "stats.json").read_text())
    assert stats["config"]["history_len"] == 10 and load_protocol(copy).history_len == 10
    stats["config"]["history_len"] = 2
    (copy / "stats.json").write_text(json.dumps(stats))
    short = load_protocol(copy)
    assert short.history_len == 2
    assert all(short.history(u) == short.histories[u][-2:] for u in short.users)
    assert load_protocol(copy, history_len=5).history_len == 5
    del stats["config"]["history_len"]  # a build from before the option: its prompts showed 10
    (copy / "stats.json").write_text(json.dumps(stats))
    assert load_protocol(copy).history_len == 10


def test_external_candidates_file_round_trip(data_dir, protocol, tmp_path):
    rows = json.loads((data_dir / "candidates" / "test.json").read_text())
    external = {u: [rows[u][0], *rows[u][1:][::-1]] for u in reversed(list(rows))}  # same sets, other orders
    path = tmp_path / "cands.json"
    path.write_text(json.dumps(external))
    again = load_protocol(data_dir, candidates_file=path, users=3)
    assert again.candidates_file == str(path) and again.users == protocol.users[:3]
    assert all(again.candidates[u] == protocol.candidates[u] and again.targets[u] == protocol.targets[u] for u in again.users)
    bad = {
        "not json": "{nope",
        "empty": "{}",
        "too short": json.dumps({"u1": ["1"]}),
        "duplicate": json.dumps({"u1": ["1", "1", "2"]}),
        "unknown item": json.dumps({"u1": ["1", "999"]}),
        "unknown user": json.dumps({"nobody": ["1", "2"]}),
    }
    messages = {"not json": "not valid JSON", "empty": "non-empty", "too short": ">= 2", "duplicate": "duplicate",
                "unknown item": "not in the catalog", "unknown user": "unknown user"}
    for name, text in bad.items():
        path.write_text(text)
        with pytest.raises(DataValidationError, match=messages[name]) as err:
            load_protocol(data_dir, candidates_file=path)
        assert str(path) in str(err.value)


# --------------------------------------------------------------------------------------------- prompts


def test_text_baseline_prompt_has_titles_in_place_of_placeholders(protocol, ilm):
    u = protocol.users[0]
    prompt = recommendation_prompt(protocol, u, CANDIDATE_TEMPLATE, with_candidates=True)
    assert prompt.user_ids == [u] and prompt.item_ids == protocol.history(u) + protocol.candidates[u]
    text = as_text(prompt, protocol.titles)
    content = text.messages[0]["content"]
    assert ITEM_TOKEN not in content and USER_TOKEN not in content and text.item_ids == []
    history = ", ".join(protocol.titles[i] for i in protocol.history(u))
    candidates = ", ".join(protocol.titles[i] for i in protocol.candidates[u])
    # candidate_selection/0, the same wording as the ILM's prompt
    assert content == f"User {u} has interacted with {history}. Which of these movies will they choose next? {candidates}"
    model, processor = ilm
    tokenizer = processor.tokenizer
    before = len(tokenizer)
    chat = ChatModel(model.language_model, text_processor(tokenizer, protocol.catalog), as_text=True)
    assert len(tokenizer) == before  # the caller's tokenizer is left alone
    inputs = chat.encode([prompt])
    assert set(inputs) == {"input_ids", "attention_mask"}
    rendered = tokenizer.apply_chat_template(text.messages, tokenize=False, add_generation_prompt=True)
    assert inputs["input_ids"][0].tolist() == tokenizer(rendered, add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------------------------- likelihood ranking


def full_forward_loglik(model, processor, prompt, answer):
    """Reference: log-likelihood of the answer from one forward of prompt + answer, via the processor's labels."""
    chat = prompt.messages + [{"role": "assistant", "content": answer}]
    batch = processor(messages=[chat], item_ids=[prompt.item_ids], user_ids=[prompt.user_ids], return_labels=True,
                      add_generation_prompt=False, padding_side="right")
    labels = batch.pop("labels")[0, 1:]
    with torch.no_grad():
        logp = model(**batch).logits[0, :-1].log_softmax(-1)
    keep = labels != -100
    return logp[keep].gather(-1, labels[keep, None]).sum().item()


def test_cached_likelihood_equals_full_forward_and_ignores_order(ilm, protocol):
    model, processor = ilm
    chat = ChatModel(model, processor, pack_tokens=5)  # several packs of answers per prompt
    u = protocol.users[1]
    prompt = recommendation_prompt(protocol, u, CANDIDATE_TEMPLATE, with_candidates=True)
    titles = [protocol.titles[c] for c in protocol.candidates[u]]
    scores = chat.score(prompt, titles)
    reference = [full_forward_loglik(model, processor, prompt, t) for t in titles]
    np.testing.assert_allclose(scores, reference, rtol=1e-4, atol=1e-4)
    assert len(set(np.round(scores, 4))) == len(titles)  # distinct titles, distinct scores
    perm = np.random.default_rng(0).permutation(len(titles))
    np.testing.assert_allclose(chat.score(prompt, [titles[i] for i in perm]), scores[perm], rtol=1e-5, atol=1e-5)
    mean = ChatModel(model, processor, reduce="mean").score(prompt, titles)
    np.testing.assert_allclose(mean, scores / [len(chat.answer_ids(t)) for t in titles], rtol=1e-5)


def test_one_prefill_serves_scores_and_generations_as_prompts_run_alone(ilm, protocol):
    """A batch of prompts of different lengths (left-padded) runs once: each row's likelihoods, free
    and constrained greedy answers equal those of its prompt run alone."""
    model, processor = ilm
    model = copy.deepcopy(model)
    with torch.no_grad():  # sharp attention: the random tiny LLM's is near uniform, blind to positions
        for layer in model.language_model.model.layers:
            layer.self_attn.q_proj.weight *= 30
            layer.self_attn.k_proj.weight *= 30
    chat = ChatModel(model, processor, pack_tokens=5, max_new_tokens=4)
    users = protocol.users[:4]
    prompts = [recommendation_prompt(protocol, u, CANDIDATE_TEMPLATE, with_candidates=True) for u in users]
    prompts[1] = dataclasses.replace(prompts[1], item_ids=prompts[1].item_ids[:2], user_ids=[], messages=[{"role": "user", "content": "Pick one of <item>, <item>."}])
    candidates = [protocol.candidates[u] for u in users]
    titles = [[protocol.titles[c] for c in row] for row in candidates]
    prefill = chat.prefill(prompts)
    padding = (prefill.inputs["attention_mask"] == 0).sum(-1)
    assert padding[1] > 0 and padding[0] == 0  # the short prompt is left-padded
    scored = chat.score_rows(prefill, titles)
    for row_scored, prompt, answers in zip(scored, prompts, titles):
        alone_sums, alone_lengths = chat.score_parts(prompt, answers)
        np.testing.assert_allclose(row_scored.sums, alone_sums, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(row_scored.lengths, alone_lengths)
    scores = [np.linspace(0, 1, len(row)) for row in candidates]
    free, constrained = chat.generate_batch(prefill), chat.generate_batch(prefill, candidates=candidates, candidate_scores=scores)
    for i, prompt in enumerate(prompts):
        assert free[i] == chat.generate([prompt])[0]
        assert constrained[i] == chat.generate([prompt], candidates=[candidates[i]], candidate_scores=[scores[i]])[0]
        assert processor.match_item(constrained[i], candidates=candidates[i])
    assert free == chat.generate(prompts)  # also as one batch without the prefill
    # the same answers read off the titles' scores: constrained ones without decoding; the random
    # LLM's free answers name no title, so those rows are decoded
    generated = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model, "generate", lambda **kwargs: generated.append(kwargs["input_ids"].shape[0]) or type(model).generate(model, **kwargs))
        assert chat.generate_batch(prefill, candidates=candidates, candidate_scores=scores, scored=scored) == constrained and generated == []
        assert chat.generate_batch(prefill, candidates=candidates, scored=scored) == chat.generate_batch(prefill, candidates=candidates)
        assert generated == [len(prompts)]  # the check above decoded once, its reading none
        assert chat.generate_batch(prefill, scored=scored) == free and generated[-1] == len(prompts)


def test_greedy_answers_read_off_scored_titles():
    """`follow_answers` walks the answers' prefix trie as greedy decoding would: free decoding while
    the model's most likely token continues an answer, constrained decoding by log-likelihood plus
    the weighted best answer score reachable, ties to the lower token id."""
    stop = {2}
    # answers [5, 6, 2], [5, 7, 2], [8, 2]; at every position the most likely token is what `top` says
    scored = ScoredAnswers(
        ids=[[5, 6, 2], [5, 7, 2], [8, 2]],
        token_logp=[np.log([0.5, 0.2, 0.9]), np.log([0.5, 0.3, 0.8]), np.log([0.4, 0.9])],
        top_token=[np.array([5, 7, 2]), np.array([5, 7, 2]), np.array([5, 2])],
    )
    assert follow_answers(scored, stop, 8) == [5, 7, 2]
    assert follow_answers(scored, stop, 2) is None  # the answer would not fit
    assert follow_answers(scored, {99}, 8) is None  # decoding would go on past the end of turn
    off = dataclasses.replace(scored, top_token=[np.array([9, 7, 2]), np.array([9, 7, 2]), np.array([9, 2])])
    assert follow_answers(off, stop, 8) is None  # the first token starts no answer: it must be decoded
    # constrained: 5 (0.5) beats 8 (0.4), then 7 (0.3) beats 6 (0.2)
    assert follow_answers(off, stop, 8, constrained=True) == [5, 7, 2]
    # the third answer's score pulls decoding to it; a weight of 0 leaves the likelihood alone
    assert follow_answers(off, stop, 8, constrained=True, answer_scores=[0.0, 0.0, 1.0], weight=10.0) == [8, 2]
    assert follow_answers(off, stop, 8, constrained=True, answer_scores=[0.0, 0.0, 1.0], weight=0.0) == [5, 7, 2]
    # a tie goes to the lower token id, as argmax does
    tied = dataclasses.replace(off, token_logp=[np.log([0.4, 0.2, 0.9]), np.log([0.4, 0.2, 0.8]), np.log([0.4, 0.9])])
    assert follow_answers(tied, stop, 8, constrained=True) == [5, 6, 2]


def test_mean_and_calibrated_scores_by_hand(ilm, protocol):
    model, processor = ilm
    chat = ChatModel(model, processor, pack_tokens=5)
    u = protocol.users[1]
    candidates = protocol.candidates[u]
    prompt = recommendation_prompt(protocol, u, CANDIDATE_TEMPLATE, with_candidates=True)
    titles = [protocol.titles[c] for c in candidates]
    sums, lengths = chat.score_parts(prompt, titles)
    reference = np.array([full_forward_loglik(model, processor, prompt, t) for t in titles])
    np.testing.assert_allclose(sums, reference, rtol=1e-4, atol=1e-4)
    # an answer's tokens are its words plus the end-of-turn token: "toy story<|im_end|>" is 3 tokens
    assert lengths.tolist() == [len(t.split()) + 1 for t in titles] == [len(chat.answer_ids(t)) for t in titles]
    np.testing.assert_allclose(chat.score(prompt, titles), sums)
    # the content-free prompt names no item: "Recommend a movie." in the same chat template
    free = content_free_prompt(protocol.noun)
    assert protocol.noun == "movie" and free.messages == [{"role": "user", "content": "Recommend a movie."}]
    assert free.item_ids == [] and free.user_ids == [] and content_free_prompt("item").messages[0]["content"] == "Recommend an item."
    prior = np.array([full_forward_loglik(model, processor, free, t) for t in titles])
    scores = LikelihoodScores(chat, protocol)
    np.testing.assert_allclose(scores.sum(u, candidates), reference, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scores.mean(u, candidates), reference / lengths, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scores.calibrated(u, candidates), reference - prior, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scores.reduced(u, candidates), scores.sum(u, candidates))
    # memoised per ChatModel: every candidate title of the protocol was scored once
    every = {protocol.titles[c] for v in protocol.users for c in protocol.candidates[v]}
    assert set(chat._content_free) == {(protocol.noun, t) for t in every}
    # without item tokens the ILM reads the content-free prompt as its frozen LLM does
    text_chat = ChatModel(model.language_model, text_processor(processor.tokenizer, protocol.catalog), as_text=True)
    np.testing.assert_allclose(text_chat.content_free_scores(titles, protocol.noun), prior, rtol=1e-4, atol=1e-4)


def test_three_likelihood_rankings_cost_one_scoring_pass(ilm, protocol, monkeypatch):
    model, processor = ilm
    calls = []
    prefill = ChatModel.prefill

    def counting(self, prompts):
        calls.extend(p.messages[0]["content"] for p in prompts)
        return prefill(self, prompts)

    monkeypatch.setattr(ChatModel, "prefill", counting)
    chat = ChatModel(model, processor, batch_size=4)
    rankings = ("ranking", "ranking_mean", "ranking_calibrated")
    out = llm_sections(chat, protocol, rankings, "tiny", bootstrap=50)
    assert len(calls) == len(protocol.users) + 1  # each user's prompt runs once, one content-free pass for every title
    assert set(out) == set(rankings)
    for section in rankings:
        assert set(out[section]) == {"hr@1", "ndcg@5"}
        check_metric(out[section]["hr@1"])
        check_metric(out[section]["ndcg@5"])
    assert out["ranking"] == ranking_section(likelihood_scorer(chat, protocol), protocol, n_boot=50)  # unchanged values
    calls.clear()
    assert llm_sections(chat, protocol, rankings, "tiny", bootstrap=50) == out
    assert len(calls) == len(protocol.users)  # the content-free scores are memoised
    calls.clear()
    assert llm_sections(chat, protocol, ("ranking_head",), "tiny", bootstrap=50) == {} and not calls  # nothing reads the candidate prompts: none runs
    # reduce="mean": the "ranking" section is the mean, as before
    mean_chat = ChatModel(model, processor, reduce="mean")
    by_mean = llm_sections(mean_chat, protocol, ("ranking", "ranking_mean"), "tiny", bootstrap=50)
    assert by_mean["ranking"] == by_mean["ranking_mean"] == out["ranking_mean"]
    assert {"ranking_mean", "ranking_calibrated"} <= set(SECTIONS) & set(LLM_SECTIONS)


def test_ranking_invariant_to_candidate_file_order(ilm, data_dir, protocol, tmp_path):
    model, processor = ilm
    chat = ChatModel(model, processor)
    rows = json.loads((data_dir / "candidates" / "test.json").read_text())
    path = tmp_path / "shuffled.json"
    path.write_text(json.dumps({u: [c[0], *np.random.default_rng(1).permutation(c[1:]).tolist()] for u, c in rows.items()}))
    other = load_protocol(data_dir, candidates_file=path)
    first = ranking_section(likelihood_scorer(chat, protocol), protocol, n_boot=100)
    second = ranking_section(likelihood_scorer(chat, other), other, n_boot=100)
    assert first == second


def test_rigged_scorers(protocol):
    best = ranking_section(lambda u, cands: [float(c == protocol.targets[u]) for c in cands], protocol, n_boot=100)
    assert best["hr@1"] == {"value": 1.0, "ci95": [1.0, 1.0]} and best["ndcg@5"]["value"] == 1.0
    tied = ranking_section(lambda u, cands: [0.0] * len(cands), protocol, n_boot=100)
    assert tied["hr@1"]["value"] == 0.0  # ties count against the true item, wherever it is shown
    # true item ranked exactly second for everyone: HR@1 0, NDCG@5 1/log2(3)
    def second(u, cands):
        decoy = next(c for c in cands if c != protocol.targets[u])
        return [2.0 if c == decoy else 1.0 if c == protocol.targets[u] else 0.0 for c in cands]

    ranked = ranking_section(second, protocol, n_boot=100)
    assert ranked["hr@1"]["value"] == 0.0 and ranked["ndcg@5"]["value"] == pytest.approx(1 / math.log2(3))


class ScriptedChatModel:
    """Answers by the user's position: the target's title (in other case), a wrong candidate, two
    candidates, a catalog title that is not a candidate, a sentence naming the target, or nonsense."""

    SCRIPT = ["target", "wrong", "listing", "outside", "verbose", "nonsense"]
    has_ranking_head = False

    def __init__(self, processor, protocol):
        self.processor, self.protocol = processor, protocol
        self.batch_size = len(protocol.users)  # one batch: `generate` sees every prompt at once

    def prefill(self, prompts):
        return prompts

    def generate_batch(self, prompts, candidates=None, candidate_scores=None, scored=None):
        return self.generate(prompts, "", candidates, candidate_scores)

    def generate(self, prompts, desc="", candidates=None, candidate_scores=None):
        answers = []
        for prompt in prompts:
            u = prompt.user_ids[0]
            titles = self.protocol.titles
            target = titles[self.protocol.targets[u]]
            wrong = [titles[c] for c in self.protocol.candidates[u] if c != self.protocol.targets[u]]
            outside = next(t for i, t in titles.items() if i not in self.protocol.candidates[u])
            answers.append({
                "target": target.upper() + "!", "wrong": wrong[0], "listing": f"{wrong[0]} or {target}", "outside": outside,
                "verbose": f"I would pick {target} for sure.", "nonsense": "no idea",
            }[self.SCRIPT[self.protocol.users.index(u)]])
        return answers

    def match_item(self, text, candidates):
        return match_answer(self.processor, text, candidates)


def test_generation_metrics_from_answers(ilm, protocol):
    _, processor = ilm
    out = generation_section(ScriptedChatModel(processor, protocol), protocol, n_boot=100)
    assert out["valid_ratio"]["value"] == pytest.approx(3 / 6)  # target, wrong, verbose
    assert out["hr@1"]["value"] == pytest.approx(2 / 6)
    assert out["hr@1_valid"]["value"] == pytest.approx(2 / 3)


def test_ranking_head_scores_prompts_in_batches_as_one_by_one(ilm, protocol):
    """Batched (left-padded prompts of different lengths) equals one prompt per forward, and the
    candidates' scores are read from the whole catalog's."""
    model, processor = ilm
    model = copy.deepcopy(model)
    model.enable_ranking_head()
    prompts = [recommendation_prompt(protocol, u, NEXT_ITEM_TEMPLATE, with_candidates=False) for u in protocol.users[:5]]
    prompts[1] = dataclasses.replace(prompts[1], item_ids=prompts[1].item_ids[:1], user_ids=[], messages=[{"role": "user", "content": "I watched <item>. What next?"}])
    batched = ChatModel(model, processor, batch_size=4)
    batched.rank_prompts(prompts)
    one_by_one = ChatModel(model, processor, batch_size=1)
    # generation's forward of the prompts ranks them too (the full-catalog section's), answers unchanged
    generating = ChatModel(model, processor, batch_size=4, max_new_tokens=3)
    assert generating.generate(prompts, rank=True) == generating.generate(prompts) and len(generating._ranked) == len(prompts)
    for prompt, user in zip(prompts, protocol.users):
        catalog = one_by_one.rank(prompt)
        np.testing.assert_allclose(batched.rank(prompt), catalog, atol=1e-5)
        np.testing.assert_allclose(generating._ranked[repr(prompt)], catalog, atol=1e-5)
        candidates = protocol.candidates[user]
        np.testing.assert_array_equal(batched.rank(prompt, candidates), batched.rank(prompt)[processor.rows(candidates)])


def test_constrained_generation_is_guided_by_the_ranking_head_from_the_next_item_prompt(ilm, protocol):
    """With a ranking head, constrained decoding gets the head's score of each candidate, read from
    the next-item prompt (no candidates in it) as the ranking-head section reads it."""
    _, processor = ilm
    seen = {}

    class HeadChatModel(ScriptedChatModel):
        has_ranking_head = True

        def rank_prompts(self, prompts):
            pass

        def rank(self, prompt, item_ids):
            assert prompt.item_ids == self.protocol.history(prompt.user_ids[0])  # history only
            return np.arange(len(item_ids), dtype=float)

        def generate(self, prompts, desc="", candidates=None, candidate_scores=None):
            seen.update(candidates=candidates, scores=candidate_scores)
            return super().generate(prompts, desc, candidates)

    generation_section(HeadChatModel(processor, protocol), protocol, n_boot=10, constrained=True)
    assert seen["candidates"] == [protocol.candidates[u] for u in protocol.users]
    assert [list(s) for s in seen["scores"]] == [list(range(len(protocol.candidates[u]))) for u in protocol.users]
    generation_section(HeadChatModel(processor, protocol), protocol, n_boot=10)  # unconstrained: no guidance
    assert seen["scores"] is None and seen["candidates"] is None


class ScriptedAligner:
    """Answers alignment rows from their reference: exactly, or the title shouted, one right genre plus
    a wrong one, the year inside a sentence."""

    def __init__(self, rows, exact):
        self.rows = {(json.dumps(r["messages"][:-1]), tuple(r["item_ids"])): r for r in rows}
        self.exact, self.budgets = exact, {}

    def answer_ids(self, text):
        return text.split()

    def generate(self, prompts, desc="", max_new_tokens=None):
        answers = []
        for p in prompts:
            row = self.rows[(json.dumps(p.messages), tuple(p.item_ids))]
            self.budgets[row["task"]] = max_new_tokens
            target = row["target"]
            answers.append(target if self.exact else {
                "item_title": target.upper() + "!", "item_genres": target.split(",")[0] + ", Horror", "item_year": f"It came out in {target}.",
            }[row["task"]])
        return answers


def test_alignment_metrics_from_answers(data_dir, sentence_model):
    rows = load_alignment_rows(data_dir, "test", max_rows=None)
    assert {r["task"] for r in rows} == {"item_title", "item_genres", "item_year"}
    embedder = SentenceEmbedder(sentence_model)
    exact = ScriptedAligner(rows, exact=True)
    perfect = alignment_section(exact, rows, embedder, n_boot=100)
    assert {k: v["value"] for k, v in perfect.items()} == pytest.approx(
        {"title_exact_match": 1.0, "genre_f1": 1.0, "year_accuracy": 1.0, "semantic_consistency": 1.0})
    # generation budgets follow the longest reference of each task (in answer tokens)
    assert exact.budgets["item_year"] == 1 and exact.budgets["item_title"] == max(len(r["target"].split()) for r in rows if r["task"] == "item_title")
    partial = alignment_section(ScriptedAligner(rows, exact=False), rows, embedder, n_boot=100)
    genres = [r["target"].split(", ") for r in rows if r["task"] == "item_genres"]
    assert partial["title_exact_match"]["value"] == 1.0 and partial["year_accuracy"]["value"] == 1.0
    assert partial["genre_f1"]["value"] == pytest.approx(np.mean([2 / (2 + len(g)) for g in genres]))
    assert partial["semantic_consistency"]["value"] < 1.0


def test_baseline_scorers(data_dir, protocol):
    train = load_from_disk(str(data_dir / "interactions" / "train"))["item_id"]
    u = protocol.users[0]
    assert popularity_scorer(data_dir)(u, ["1", "2"]) == [train.count("1"), train.count("2")]
    cf = load_file(str(data_dir / "cf" / "embeddings.safetensors"))
    ids = json.loads((data_dir / "cf" / "id_maps.json").read_text())
    expected = cf["item_embeddings"][ids["item_ids"].index("3")] @ cf["user_embeddings"][ids["user_ids"].index(u)]
    assert als_scorer(data_dir)(u, ["3"])[0] == pytest.approx(float(expected), rel=1e-5)
    # the ALS ranking agrees with the data build's own ALS check on the same candidates
    als_eval = json.loads((data_dir / "cf" / "als_eval.json").read_text())["test"]
    assert ranking_section(als_scorer(data_dir), protocol, n_boot=0)["hr@1"]["value"] == pytest.approx(als_eval["hr@1"], abs=1e-4)


def test_preservation_detects_a_changed_llm(ilm, tiny_components):
    model, processor = ilm
    base = AutoModelForCausalLM.from_pretrained(tiny_components["llm"]).eval()
    assert max_logit_difference(model, processor, base) == 0.0
    with torch.no_grad():
        base.lm_head.weight[5] += 0.1
    assert max_logit_difference(model, processor, base) > 0


# --------------------------------------------------------------------------------------------- end to end


SCHEMA = {
    "ranking": {"hr@1", "ndcg@5"},
    "ranking_mean": {"hr@1", "ndcg@5"},
    "ranking_calibrated": {"hr@1", "ndcg@5"},
    "generation": {"valid_ratio", "hr@1", "hr@1_valid"},
    "generation_constrained": {"valid_ratio", "hr@1", "hr@1_valid"},
    "full_catalog": {"exact_title_hit", "hr@10", "ndcg@10"},
}
ALIGNMENT_KEYS = {"title_exact_match", "genre_f1", "year_accuracy", "semantic_consistency"}


def check_metric(value):
    assert set(value) == {"value", "ci95"} and 0.0 <= value["value"] <= 1.0
    assert value["ci95"][0] <= value["value"] <= value["ci95"][1]


def test_evaluate_model_and_baselines_write_one_report(ilm, data_dir, sentence_model, tiny_components, tmp_path):
    model, processor = ilm
    common = dict(users=4, bootstrap=100, max_new_tokens=4, batch_size=3)
    results = evaluate_model(model, processor, data_dir, name="tiny-ilm", full_catalog=True, alignment_rows=3,
                             sentence_model=sentence_model, **common)
    protocol = results["protocol"]
    assert protocol == {"name": f"{NUM_CANDIDATES}-candidate", "num_candidates": NUM_CANDIDATES, "split": "test", "users": 4,
                        "candidates_file": str(data_dir / "candidates" / "test.json"), "history_len": 10, "bootstrap": 100, "seed": 0}
    got = results["models"]["tiny-ilm"]
    assert set(got) == {*SCHEMA, "alignment", "preservation", "timing_s", "dtype"} and got["dtype"] == "float32"
    for section, keys in SCHEMA.items():
        assert set(got[section]) == keys
        for key in keys - {"hr@1_valid"}:  # undefined when no answer is valid
            check_metric(got[section][key])
    assert set(got["alignment"]) == {"seen", "unseen"}
    for kind in ("seen", "unseen"):
        assert set(got["alignment"][kind]) == ALIGNMENT_KEYS
        assert -1 <= got["alignment"][kind]["semantic_consistency"]["value"] <= 1
    assert got["preservation"] == {"max_abs_logit_diff": 0.0} and got["timing_s"] > 0

    llm = AutoModelForCausalLM.from_pretrained(tiny_components["llm"]).eval()
    baselines = evaluate_baselines(data_dir, llm=llm, tokenizer=processor.tokenizer, **common)
    assert baselines["protocol"] == protocol
    assert set(baselines["models"]["pop"]) == set(baselines["models"]["als"]) == {"ranking", "timing_s"}
    assert set(baselines["models"]["text"]) == {*SCHEMA, "timing_s", "dtype"}
    assert set(baselines["models"]["text"]["full_catalog"]) == {"exact_title_hit"}  # no --full-catalog here

    merged = merge_results([results, baselines])
    assert list(merged["models"]) == ["tiny-ilm", "pop", "als", "text"]
    json_path, md_path = write_report(merged, tmp_path / "report")
    assert json.loads(json_path.read_text()) == merged
    markdown = md_path.read_text()
    value = got["ranking"]["hr@1"]
    assert f"| tiny-ilm | {value['value']:.3f} [{value['ci95'][0]:.3f}, {value['ci95'][1]:.3f}]" in markdown
    assert "| pop |" in markdown and "| text |" in markdown and "4 users" in markdown
    for header in ("HR@1 (ranking, mean)", "NDCG@5 (ranking, mean)", "HR@1 (ranking, calibrated)", "NDCG@5 (ranking, calibrated)"):
        assert header in markdown
    assert "ranking head" not in markdown.split("**Protocol**")[0]  # the tiny ILM has no ranking head: no empty columns
    with pytest.raises(ValueError, match="in two results"):
        merge_results([results, results])
    # sections of one model evaluated in separate runs come together
    split = [{"protocol": protocol, "models": {"tiny-ilm": {k: got[k] for k in keys} | {"timing_s": 1.0}}}
             for keys in (["ranking", "generation"], ["alignment", "preservation"])]
    assert merge_results(split)["models"]["tiny-ilm"] == {k: got[k] for k in ["ranking", "generation", "alignment", "preservation"]} | {"timing_s": 2.0}
    other = json.loads(json.dumps(baselines))
    other["protocol"]["seed"] = 1
    with pytest.raises(ValueError, match="different protocols"):
        merge_results([results, other])


def test_report_has_calibrated_and_ranking_head_columns():
    value = {"value": 0.5, "ci95": [0.25, 0.75]}
    results = {
        "protocol": {"name": "5-candidate", "num_candidates": 5, "split": "test", "users": 2, "candidates_file": "c.json",
                     "history_len": 10, "bootstrap": 100, "seed": 0},
        "models": {"ilm": {
            "ranking": {"hr@1": value, "ndcg@5": value},
            "ranking_calibrated": {"hr@1": {"value": 0.125, "ci95": None}, "ndcg@5": value},
            "ranking_head": {"hr@1": value, "ndcg@5": value, "full_catalog_hr@10": {"value": 0.875, "ci95": None},
                             "full_catalog_ndcg@10": value},
        }},
    }
    markdown = to_markdown(results)
    header = next(line for line in markdown.splitlines() if line.startswith("| model |"))
    assert header == ("| model | HR@1 (ranking) | NDCG@5 (ranking) | HR@1 (ranking, calibrated) | NDCG@5 (ranking, calibrated) "
                      "| HR@1 (ranking head) | NDCG@5 (ranking head) | HR@10 (ranking head, full catalog) |")
    assert "| 0.125 |" in markdown and "| 0.875 |" in markdown and "(ranking, mean)" not in markdown
    for explained in ("*ranking, mean*", "*ranking, calibrated*", "*ranking head*", "`Recommend a {noun}.`"):
        assert explained in markdown


# --------------------------------------------------------------------------------------------- text baseline cache


class ModelCalls:
    """Counts the model's forwards (ChatModel.prefill / generate_batch calls), or (strict) fails on any."""

    def __init__(self, monkeypatch):
        self.monkeypatch, self.count, self.strict = monkeypatch, 0, False
        for name in ("prefill", "generate_batch"):
            original = getattr(ChatModel, name)
            monkeypatch.setattr(ChatModel, name, self.wrap(original))

    def wrap(self, original):
        def method(chat_model, *args, **kwargs):
            if self.strict:
                raise AssertionError("the model ran although the result is cached")
            self.count += 1
            return original(chat_model, *args, **kwargs)

        return method

    def run(self, fn, *args, **kwargs):
        """(result, whether the model ran)."""
        before = self.count
        result = fn(*args, **kwargs)
        return result, self.count > before


def test_text_baseline_cache_hits_and_misses(ilm, tiny_components, data_dir, protocol, tmp_path, monkeypatch, caplog):
    _, processor = ilm
    llm = AutoModelForCausalLM.from_pretrained(tiny_components["llm"]).eval()
    folder = tmp_path / "cache"
    common = dict(baselines=["text"], tokenizer=processor.tokenizer, users=3, bootstrap=20, max_new_tokens=2,
                  sections=("ranking", "ranking_calibrated", "generation"), cache_dir=folder)
    calls = ModelCalls(monkeypatch)
    first, ran = calls.run(evaluate_baselines, data_dir, llm=llm, **common)
    assert ran and set(first["models"]["text"]) == {"ranking", "ranking_calibrated", "generation", "timing_s", "dtype"}
    assert len(list(folder.glob("*.json"))) == 1 and not list(folder.glob("*.tmp"))
    entry = json.loads(next(folder.glob("*.json")).read_text())
    assert entry["cache_version"] == cache.CACHE_VERSION and entry["result"] | {"dtype": "float32"} == first["models"]["text"]

    # the same LLM (another copy of the weights), data and protocol: the stored result, the model not run
    calls.strict = True
    with caplog.at_level(logging.INFO, logger="training.evaluate"):
        second = evaluate_baselines(data_dir, llm=AutoModelForCausalLM.from_pretrained(tiny_components["llm"]).eval(), **common)
    assert second == first and "text baseline: cached (key" in caplog.text
    calls.strict = False

    def misses(**changes):
        options = common | {"llm": llm} | changes
        result, ran = calls.run(evaluate_baselines, data_dir, **options)
        again, ran_again = calls.run(evaluate_baselines, data_dir, **options)
        assert not ran_again and again == result  # stored under its own key
        return ran

    changed = copy.deepcopy(llm)
    with torch.no_grad():
        changed.lm_head.weight[3, 0] += 1e-3  # one parameter of the LLM
    assert misses(llm=changed)
    assert misses(users=2) and misses(history_len=5)  # the protocol
    catalog = copy.deepcopy(protocol.catalog)
    catalog["items"][-1]["title"] = "the title drama"  # one catalog title
    assert misses(protocol=dataclasses.replace(load_protocol(data_dir, users=3), catalog=catalog))
    # the candidates file's contents (the same sets in another order: the same candidates are shown)
    rows = json.loads((data_dir / "candidates" / "test.json").read_text())
    path = tmp_path / "candidates.json"
    path.write_text(json.dumps(rows))
    assert misses(candidates_file=path)  # another path (protocol.describe names it)
    path.write_text(json.dumps({u: [c[0], *c[1:][::-1]] for u, c in rows.items()}))
    assert misses(candidates_file=path)  # the same path, other contents
    assert len(list(folder.glob("*.json"))) == 7

    # cache_dir=False: always computed, nothing written
    result, ran = calls.run(evaluate_baselines, data_dir, llm=llm, **common | {"cache_dir": False})
    assert ran and result["models"]["text"] == first["models"]["text"] | {"timing_s": result["models"]["text"]["timing_s"]}
    assert len(list(folder.glob("*.json"))) == 7


def test_cache_folder_from_env(ilm, tiny_components, data_dir, tmp_path, monkeypatch, isolated_cache):
    monkeypatch.delenv("ILM_CACHE_DIR")
    monkeypatch.delenv("ILM_CACHE", raising=False)
    assert cache.cache_folder() == cache.cache_folder(True) == Path("~/.cache/ilm/baselines").expanduser()
    monkeypatch.setenv("ILM_CACHE", str(tmp_path / "root"))  # the project's cache root (training.assets)
    assert cache.cache_folder() == tmp_path / "root" / "baselines"
    assert cache.cache_folder(False) is None and cache.cache_folder(tmp_path / "x") == tmp_path / "x"
    env = tmp_path / "from-env"
    monkeypatch.setenv("ILM_CACHE_DIR", str(env))
    assert cache.cache_folder() == env
    _, processor = ilm
    llm = AutoModelForCausalLM.from_pretrained(tiny_components["llm"]).eval()
    common = dict(baselines=["pop", "text"], llm=llm, tokenizer=processor.tokenizer, users=2, bootstrap=0, sections=("ranking",))
    calls = ModelCalls(monkeypatch)
    first, ran = calls.run(evaluate_baselines, data_dir, **common)
    assert ran and len(list(env.glob("*.json"))) == 1 and not isolated_cache.exists()
    second, ran = calls.run(evaluate_baselines, data_dir, **common)
    assert not ran and second["models"]["text"] == first["models"]["text"]
    assert second["models"]["pop"]["ranking"] == first["models"]["pop"]["ranking"]  # popularity is never cached
    # an unreadable cache file is a miss, then rewritten
    stored = next(env.glob("*.json"))
    stored.write_text("{truncated")
    third, ran = calls.run(evaluate_baselines, data_dir, **common)
    assert ran and third["models"]["text"]["ranking"] == first["models"]["text"]["ranking"]
    assert json.loads(stored.read_text())["result"]["ranking"] == first["models"]["text"]["ranking"]


def test_merge_takes_one_candidates_file_by_any_path_and_refuses_another(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cands.json").write_text('{"u1": ["1", "2"]}')
    (tmp_path / "copy.json").write_text('{"u1": ["1", "2"]}')
    (tmp_path / "other.json").write_text('{"u1": ["2", "1"]}')

    def result(path, name):
        return {"protocol": {"split": "test", "candidates_file": path}, "models": {name: {"ranking": {}}}}

    merged = merge_results([result("cands.json", "a"), result(str(tmp_path / "cands.json"), "b"), result("copy.json", "c")])
    assert list(merged["models"]) == ["a", "b", "c"]
    with pytest.raises(ValueError, match=r"different protocols \(differ in \['candidates_file'\]\)"):
        merge_results([result("cands.json", "a"), result("other.json", "b")])
    with pytest.raises(ValueError, match="different protocols"):  # a file that is not here cannot be checked
        merge_results([result("cands.json", "a"), result("gone.json", "b")])


def test_cli_end_to_end_and_merge(ilm, data_dir, sentence_model, tmp_path, capsys):
    model, processor = ilm
    model.save_pretrained(tmp_path / "tiny-ilm")
    processor.save_pretrained(tmp_path / "tiny-ilm")
    common = ["--data", str(data_dir), "--users", "3", "--bootstrap", "50", "--max-new-tokens", "3"]
    cli_main(["--model", str(tmp_path / "tiny-ilm"), *common, "--baselines", "pop,als", "--sections", "ranking,preservation",
              "--out", str(tmp_path / "a")])
    cli_main([*common, "--baselines", "text", "--sections", "ranking", "--out", str(tmp_path / "b"), "--llm", str(model.config.text_model_name_or_path)])
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    assert list(a["models"]) == ["tiny-ilm", "pop", "als"] and a["protocol"]["users"] == 3
    assert a["models"]["tiny-ilm"]["preservation"]["max_abs_logit_diff"] == 0.0
    cli_main(["--merge", str(tmp_path / "a" / "results.json"), str(tmp_path / "b" / "results.json"), "--out", str(tmp_path / "m")])
    merged = json.loads((tmp_path / "m" / "results.json").read_text())
    assert list(merged["models"]) == ["tiny-ilm", "pop", "als", "text"]
    assert "| text |" in capsys.readouterr().out
    assert to_markdown(merged) == (tmp_path / "m" / "results.md").read_text()


def test_evaluation_precision_auto_and_bfloat16_run(ilm, data_dir, tmp_path, monkeypatch):
    assert assets.dtype("float32") is torch.float32 and assets.dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ValueError, match="dtype 'half'; choose auto, float32, bfloat16"):
        assets.dtype("half")
    for amx, avx512_bf16 in ((True, False), (False, True), (False, False)):  # auto on a CPU: bfloat16 with bfloat16 instructions
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda avx512_bf16=avx512_bf16: avx512_bf16)
        assert assets.dtype("auto", "cpu") is (torch.bfloat16 if amx or avx512_bf16 else torch.float32)
    model, processor = ilm
    model.save_pretrained(tmp_path / "tiny-ilm")
    processor.save_pretrained(tmp_path / "tiny-ilm")
    cli_main(["--model", str(tmp_path / "tiny-ilm"), "--data", str(data_dir), "--users", "3", "--bootstrap", "0", "--max-new-tokens", "3",
              "--sections", "ranking,generation,preservation", "--dtype", "bfloat16", "--out", str(tmp_path / "bf16")])
    got = json.loads((tmp_path / "bf16" / "results.json").read_text())["models"]["tiny-ilm"]
    # the frozen LLM reloaded for the check is cast as the ILM's was: still logit for logit
    assert got["dtype"] == "bfloat16" and got["preservation"]["max_abs_logit_diff"] == 0.0
    assert "| tiny-ilm | " in (tmp_path / "bf16" / "results.md").read_text() and "bfloat16 |" in (tmp_path / "bf16" / "results.md").read_text()


# --------------------------------------------------------------------------------------------- real defaults


@pytest.mark.slow
def test_real_defaults_untrained_ilm(tmp_path):
    """ml-100k + SmolLM2/MiniLM: histories match the build, ALS matches its own check, an untrained ILM runs."""
    from training import assets

    data = tmp_path / "data"
    build_dataset(data)
    protocol = load_protocol(data, users=3)
    rows = load_from_disk(str(data / "phase2" / "test"))
    for row in rows.filter(lambda r: r["task"] == "candidate_selection" and r["user_ids"] and r["user_ids"][0] in protocol.users):
        u = row["user_ids"][0]
        assert row["item_ids"][: len(protocol.history(u))] == protocol.history(u)
        assert sorted(row["item_ids"][-NUM_CANDIDATES * 4 :]) == sorted(protocol.candidates[u])  # 20 candidates
    full = load_protocol(data)
    als = ranking_section(als_scorer(data), full, n_boot=0)["hr@1"]["value"]
    assert als == pytest.approx(json.loads((data / "cf" / "als_eval.json").read_text())["test"]["hr@1"], abs=1e-4)

    catalog = json.loads((data / "catalog.json").read_text())
    cf = load_file(str(data / "cf" / "embeddings.safetensors"))
    llm_path = assets.default_llm_path()
    processor = ILMProcessor.from_components(llm_path, catalog=catalog, num_query_tokens=4)
    model = ILMForConditionalGeneration.from_components(
        llm_path, assets.default_qformer_path(), item_token_id=processor.item_token_id, user_token_id=processor.user_token_id,
        num_query_tokens=4, item_embeddings=torch.from_numpy(cf["item_embeddings"]), user_embeddings=torch.from_numpy(cf["user_embeddings"]),
    ).eval()
    results = evaluate_model(model, processor, data, protocol=protocol, sections=("ranking", "preservation"), bootstrap=100)
    got = results["models"]["ilm"]
    assert got["preservation"]["max_abs_logit_diff"] == 0.0
    check_metric(got["ranking"]["hr@1"])
    assert results["protocol"]["num_candidates"] == 20 and results["protocol"]["users"] == 3
