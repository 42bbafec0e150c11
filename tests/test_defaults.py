"""Integration tests on the real embedded defaults (SmolLM2-135M-Instruct from GGUF, all-MiniLM-L6-v2)."""

import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from modeling_ilm import ILMForConditionalGeneration, ILMProcessor
from training import assets

pytestmark = pytest.mark.slow
CATALOG = {"items": [{"item_id": "1", "title": "Toy Story (1995)"}, {"item_id": "2", "title": "GoldenEye (1995)"}], "users": [{"user_id": "7"}]}


@pytest.fixture(scope="module")
def defaults():
    start = time.time()
    llm_path = assets.default_llm_path()  # converts the GGUF once per cache
    processor = ILMProcessor.from_components(llm_path, catalog=CATALOG, num_query_tokens=4)
    torch.manual_seed(0)
    model = ILMForConditionalGeneration.from_components(
        llm_path,
        assets.default_qformer_path(),
        item_token_id=processor.item_token_id,
        user_token_id=processor.user_token_id,
        num_query_tokens=4,
        item_embeddings=torch.randn(2, 64),
        user_embeddings=torch.randn(1, 64),
    ).eval()
    print(f"\n[defaults] load time (incl. first GGUF conversion if any): {time.time() - start:.1f}s")
    return llm_path, processor, model


def test_default_components_are_the_expected_models(defaults):
    _, processor, model = defaults
    assert model.config.text_config.model_type == "llama" and model.config.text_config.hidden_size == 576
    assert model.config.qformer_config.hidden_size == 384 and model.config.qformer_config.num_hidden_layers == 6
    assert processor.item_token_id >= model.config.text_config.vocab_size  # placeholders never hit the LLM vocab


def test_text_only_logits_equal_the_base_llm_exactly(defaults):
    llm_path, processor, model = defaults
    base = AutoModelForCausalLM.from_pretrained(llm_path, dtype=torch.float32).eval()
    batch = processor(messages=[[{"role": "user", "content": "What is the capital of France?"}], [{"role": "user", "content": "Name a movie."}]])
    with torch.no_grad():
        diff = (model(**batch).logits - base(**batch).logits).abs().max().item()
    print(f"[defaults] text-only max |logit diff| vs base LLM: {diff}")
    assert diff == 0.0
    answer = model.generate(**batch, max_new_tokens=8, do_sample=False)[0, batch["input_ids"].shape[1]:]
    assert "Paris" in processor.decode(answer)


@pytest.mark.parametrize("light", [False, True])
def test_round_trip_is_bit_identical(defaults, tmp_path, light):
    _, processor, model = defaults
    model.save_pretrained(tmp_path, include_language_model=not light)
    loaded = ILMForConditionalGeneration.from_pretrained(tmp_path).eval()
    batch = processor(messages=[{"role": "user", "content": "User <user> liked <item>. Is <item> similar?"}], item_ids=["1", "2"], user_ids=["7"])
    with torch.no_grad():
        diff = (model(**batch).logits - loaded(**batch).logits).abs().max().item()
    print(f"[defaults] {'light' if light else 'standalone'} save/load max |logit diff|: {diff}")
    assert diff == 0.0


def test_greedy_answers_read_off_answer_scores_equal_decoding(defaults):
    """SmolLM2 asked to pick one of a few listed movies answers "The answer is: <title>": that answer
    is read off the likelihood pass of such answers (`follow_answers`) instead of decoded, and equals
    greedy decoding; the answers that are none of them are decoded; the constrained answers over
    the titles are all read off and equal constrained decoding."""
    from training.evaluate.lm import ChatModel
    from training.evaluate.prompts import Prompt, text_processor

    llm_path, processor, _ = defaults
    titles = ["Toy Story (1995)", "GoldenEye (1995)", "Heat (1995)", "Casino (1995)", "Babe (1995)", "Jumanji (1995)"]
    catalog = {"items": [{"item_id": str(i), "title": t} for i, t in enumerate(titles)], "users": []}
    llm = AutoModelForCausalLM.from_pretrained(llm_path, dtype=torch.float32).eval()
    chat = ChatModel(llm, text_processor(processor.tokenizer, catalog), as_text=True, max_new_tokens=20)
    questions = [f"Candidates: {', '.join(titles[i:] + titles[:i])}. Which one should I watch? Reply with the title only." for i in range(len(titles))]
    questions += ["Tell me a joke about movies.", "Which of Heat (1995) and Babe (1995) is scarier?"]
    prompts = [Prompt([{"role": "user", "content": q}], [], []) for q in questions]
    sentences = [f"The answer is: {t}" for t in titles]
    prefill = chat.prefill(prompts)
    decoded = []
    original = llm.generate
    llm.generate = lambda **kwargs: decoded.append(kwargs["input_ids"].shape[0]) or original(**kwargs)
    free_read = chat.generate_batch(prefill, scored=chat.score_rows(prefill, [sentences] * len(prompts)))
    candidates = [[str(i) for i in range(len(titles))]] * len(prompts)
    constrained_read = chat.generate_batch(prefill, candidates=candidates, scored=chat.score_rows(prefill, [titles] * len(prompts)))
    read_decodes = list(decoded)
    free, constrained = chat.generate_batch(prefill), chat.generate_batch(prefill, candidates=candidates)
    print(f"[defaults] free answers {free}; rows decoded when read off the scores: {read_decodes}")
    assert free_read == free and constrained_read == constrained
    read = sum(answer in sentences for answer in free)
    assert read >= 1 and read_decodes == [len(prompts) - read]  # one decoding, of the other rows only
    assert all(answer in titles for answer in constrained)


@pytest.mark.parametrize("spaced", [True, False])
def test_unspaced_candidate_titles_are_tokenized_as_the_answers_naming_them(defaults, spaced):
    """SmolLM2's BPE splits a word that starts a turn otherwise than after a space (" Toy" against
    "T", "oy"), so with "<item> Toy Story (1995)" in the candidate list an answer naming it has tokens
    the prompt never shows; with candidate_title_space=False ("<item>Toy Story (1995)") every listed
    title's tokens are the answer's (labelled) tokens, but for the closing parenthesis, which the
    list's comma joins ("),")."""
    from training.data.templates import get_template, items, render, user

    llm_path, _, _ = defaults
    titles = ["Toy Story (1995)", "Twelve Monkeys (1995)", "Babe (1995)", "Heat (1995)", "Brothers McMullen, The (1995)"]
    catalog = {"items": [{"item_id": str(i), "title": t} for i, t in enumerate(titles)], "users": [{"user_id": "7"}]}
    processor = ILMProcessor.from_components(llm_path, catalog=catalog, num_query_tokens=4)
    ids = [str(i) for i in range(len(titles))]
    candidates = items(*ids, titled=True, tokens_first=True, spaced=spaced)
    template = get_template("candidate_selection/0")
    same = []
    for answer_id in ids:
        facts = {"user": user("7"), "history": items("4"), "candidates": candidates, "noun": "movie", "title": titles[int(answer_id)]}
        messages, item_ids, user_ids = render(template, facts, dict(zip(ids, titles)))
        out = processor(messages=messages, item_ids=item_ids, user_ids=user_ids, return_labels=True, add_generation_prompt=False)
        tokens, labels = out["input_ids"][0].tolist(), out["labels"][0].tolist()
        labelled = [t for t, label in zip(tokens, labels) if label != -100]
        answer = labelled[: labelled.index(processor.tokenizer.eos_token_id) - 1]  # up to ")" and the end of the turn
        after_placeholders = [k + 1 for k in range(len(tokens) - 1) if tokens[k] == processor.item_token_id != tokens[k + 1]]
        listed = after_placeholders[-len(titles) :]  # the history's placeholder comes first
        start = listed[int(answer_id)]
        same.append(tokens[start : start + len(answer)] == answer)
    assert all(same) if not spaced else not any(same)  # "ĠHeat" against "Heat"; "ĠToy" against "T", "oy"
