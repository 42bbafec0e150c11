"""The ranking head (config.ranking_head): one forward scores the catalog through the item tokens."""

import pytest
import torch
from tiny import CATALOG

from modeling_ilm import ILMForConditionalGeneration, ILMProcessor
from training.finetune import ChatCollator

QUERIES = 2
PROMPTS = [
    [{"role": "user", "content": "user <user> liked <item> and <item> . recommend a comedy"}],
    [{"role": "user", "content": "what movie is <item> ?"}],
]
ITEMS, USERS = [["1", "2"], ["3"]], [["1"], []]
ANSWERS = ["Heat (1995)", "Babe (1995)"]


@pytest.fixture(scope="module")
def processor(tiny_components):
    return ILMProcessor.from_components(tiny_components["llm"], catalog=CATALOG, num_query_tokens=QUERIES)


def build(tiny_components, processor, adapter_type="qformer", **config):
    torch.manual_seed(0)
    return ILMForConditionalGeneration.from_components(
        tiny_components["llm"], tiny_components["bert"],
        item_token_id=processor.item_token_id, user_token_id=processor.user_token_id,
        num_query_tokens=QUERIES, adapter_type=adapter_type, mlp_hidden_size=16, ranking_head=True, ranking_dim=16,
        item_embeddings=torch.randn(len(CATALOG["items"]), 8), user_embeddings=torch.randn(len(CATALOG["users"]), 8), **config,
    ).eval()


@pytest.fixture(scope="module", params=["qformer", "mlp"])
def model(request, tiny_components, processor):
    return build(tiny_components, processor, request.param)


def answered(processor):
    chats = [p + [{"role": "assistant", "content": a}] for p, a in zip(PROMPTS, ANSWERS)]
    return processor(messages=chats, item_ids=ITEMS, user_ids=USERS, return_labels=True, add_generation_prompt=False, padding_side="right")


@torch.no_grad()
def test_scores_the_catalog_shared_or_per_row_candidates_and_precomputed_tokens(model, processor):
    inputs = processor(messages=PROMPTS, item_ids=ITEMS, user_ids=USERS)
    catalog = model.score_items(**inputs)
    assert catalog.shape == (2, len(CATALOG["items"]))
    per_row = torch.tensor([[4, 0, 2], [5, 1, 3]])
    scores = model.score_items(**inputs, candidate_ids=per_row)
    torch.testing.assert_close(scores, catalog.gather(1, per_row))
    tokens = model.get_item_tokens(torch.arange(len(CATALOG["items"])))
    torch.testing.assert_close(model.score_items(**inputs, candidate_tokens=tokens[per_row]), scores)
    # the scores do not depend on which other items are ranked
    torch.testing.assert_close(model.score_items(**inputs, candidate_ids=torch.tensor([2]))[:, 0], catalog[:, 2])


@torch.no_grad()
def test_head_starts_as_similarity_to_the_prompts_items(tiny_components, processor):
    model = build(tiny_components, processor)
    tokens = model.get_item_tokens(torch.arange(len(CATALOG["items"])))
    prompt_items = torch.stack([tokens[processor.rows(ids)].mean((0, 1)) for ids in ITEMS])
    keys = lambda x: torch.nn.functional.normalize(model.item_scorer.key(x), dim=-1)  # noqa: E731
    expected = model.item_scorer.logit_scale.exp() * keys(prompt_items) @ keys(tokens.mean(1)).T
    inputs = processor(messages=PROMPTS, item_ids=ITEMS, user_ids=USERS)
    torch.testing.assert_close(model.score_items(**inputs), expected)
    # switched off, the query is the LLM's view alone, initialised as usual
    plain = build(tiny_components, processor, ranking_item_similarity=False)
    assert all(part[1].weight.abs().sum() > 0 for part in plain.item_scorer.query.values())
    assert not torch.allclose(plain.score_items(**inputs), expected)


def test_item_prior_starts_at_zero_learns_a_score_per_item_and_is_saved(tiny_components, processor, tmp_path):
    model = build(tiny_components, processor, ranking_item_prior=True)
    inputs = processor(messages=PROMPTS, item_ids=ITEMS, user_ids=USERS)

    @torch.no_grad()
    def prior_and_cosines():
        prior = model.item_scorer.prior
        model.item_scorer.prior = None
        cosines = model.score_items(**inputs)
        model.item_scorer.prior = prior
        return prior(model.get_item_tokens(torch.arange(6)).mean(1)).squeeze(-1), cosines

    prior, cosines = prior_and_cosines()
    assert not prior.any()  # no item preferred at init
    # every user's answer is item 4: a score of the item alone explains it, and the prior learns it
    train, labels = answered(processor), torch.tensor([4, 4])
    optimizer = torch.optim.AdamW(model.item_scorer.prior.parameters(), lr=1e-2)
    for _ in range(30):
        loss = model(**train, rank_item_ids=torch.arange(6), rank_labels=labels).loss_rank
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    prior, cosines = prior_and_cosines()
    assert prior.argmax() == 4
    with torch.no_grad():
        torch.testing.assert_close(model.score_items(**inputs), cosines + prior, atol=1e-4, rtol=1e-4)
        model.save_pretrained(tmp_path)
        reloaded = ILMForConditionalGeneration.from_pretrained(tmp_path).eval()
        assert reloaded.config.ranking_item_prior
        torch.testing.assert_close(reloaded.score_items(**inputs), model.score_items(**inputs))


@torch.no_grad()
def test_training_reads_the_hidden_state_where_the_answer_starts(model, processor):
    """A right-padded training batch (answers included) and the left-padded prompt of generation
    put the head's query on the same token, so training and inference score alike."""
    train = answered(processor)
    out = model(**train, rank_item_ids=torch.arange(6), rank_labels=torch.tensor([2, 5]))
    prompt = processor(messages=PROMPTS, item_ids=ITEMS, user_ids=USERS)
    torch.testing.assert_close(out.rank_logits, model.score_items(**prompt), atol=1e-5, rtol=1e-5)
    expected = torch.nn.functional.cross_entropy(out.rank_logits, torch.tensor([2, 5]))
    torch.testing.assert_close(out.loss_rank, expected)
    torch.testing.assert_close(out.loss, out.loss_lm + model.config.ranking_loss_weight * out.loss_rank)
    # rows without a ranking target (-100) add nothing
    partial = model(**train, rank_item_ids=torch.arange(6), rank_labels=torch.tensor([2, -100]))
    torch.testing.assert_close(partial.loss_rank, torch.nn.functional.cross_entropy(out.rank_logits[:1], torch.tensor([2])))


def test_ranking_loss_trains_encoder_and_head_but_not_the_llm(tiny_components, processor):
    model = build(tiny_components, processor).train()
    train = answered(processor)
    labels, ranked = torch.tensor([2, 5]), torch.arange(6)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=3e-3)
    llm_before = {k: v.clone() for k, v in model.language_model.state_dict().items()}
    first = None
    for step in range(40):
        out = model(input_ids=train["input_ids"], attention_mask=train["attention_mask"], item_ids=train["item_ids"],
                    user_ids=train["user_ids"], rank_item_ids=ranked, rank_labels=labels)
        if step == 0:
            out.loss.backward()
            assert model.item_scorer.query["answer"][1].weight.grad.abs().sum() > 0
            assert model.item_encoder.query_tokens.grad.abs().sum() > 0  # keys and prompt both come from the encoder
            assert all(p.grad is None for p in model.language_model.parameters())
            first = out.loss_rank.item()
            optimizer.zero_grad()
            out = model(input_ids=train["input_ids"], attention_mask=train["attention_mask"], item_ids=train["item_ids"],
                        user_ids=train["user_ids"], rank_item_ids=ranked, rank_labels=labels)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert out.loss_rank.item() < 0.3 * first
    assert (out.rank_logits.argmax(-1) == labels).all()
    assert all(torch.equal(v, llm_before[k]) for k, v in model.language_model.state_dict().items())


def test_bad_ranking_inputs_are_clear_errors(tiny_components, processor, model):
    train = answered(processor)
    with pytest.raises(ValueError, match="must be one of the rank_item_ids"):
        model(**train, rank_item_ids=torch.tensor([0, 1]), rank_labels=torch.tensor([2, 5]))
    plain = ILMForConditionalGeneration.from_components(
        tiny_components["llm"], tiny_components["bert"], item_token_id=processor.item_token_id,
        user_token_id=processor.user_token_id, num_query_tokens=QUERIES, item_embeddings=torch.randn(6, 8), user_embeddings=torch.randn(4, 8),
    )
    with pytest.raises(ValueError, match="no ranking head"):
        plain.score_items(**processor(messages=PROMPTS, item_ids=ITEMS, user_ids=USERS))
    plain.enable_ranking_head(ranking_dim=8)
    assert plain.config.ranking_head and plain.score_items(**processor(messages=PROMPTS, item_ids=ITEMS, user_ids=USERS)).shape == (2, 6)


@pytest.mark.parametrize("light", [False, True])
@torch.no_grad()
def test_head_survives_save_and_load(tiny_components, processor, model, tmp_path, light):
    model.save_pretrained(tmp_path, include_language_model=not light)
    loaded = ILMForConditionalGeneration.from_pretrained(tmp_path).eval()
    inputs = processor(messages=PROMPTS, item_ids=ITEMS, user_ids=USERS)
    assert loaded.config.ranking_head
    assert torch.equal(loaded.score_items(**inputs), model.score_items(**inputs))


def test_collator_gives_targets_of_ranking_tasks_and_seeded_negatives(processor):
    rows = [
        {"task": "next_item_title", "messages": PROMPTS[0] + [{"role": "assistant", "content": ANSWERS[0]}], "item_ids": ITEMS[0], "user_ids": USERS[0], "target_item_id": "3"},
        {"task": "item_title", "messages": PROMPTS[1] + [{"role": "assistant", "content": ANSWERS[1]}], "item_ids": ITEMS[1], "user_ids": USERS[1], "target_item_id": "6"},
    ]
    collate = ChatCollator(processor, ranking_negatives=3, ranking_tasks=["next_item_title"])
    batch = collate(rows)
    assert batch["rank_labels"].tolist() == [2, -100]  # item "3" is row 2; item_title is no ranking task
    assert 2 in batch["rank_item_ids"].tolist() and len(set(batch["rank_item_ids"].tolist())) == len(batch["rank_item_ids"])
    assert torch.equal(collate(rows)["rank_item_ids"], batch["rank_item_ids"])
    assert "rank_labels" not in ChatCollator(processor)(rows)


def test_token_level_labels_rank_at_every_labelled_position(model, processor):
    """Token-level rank_labels: each labelled position is a query over its prompt prefix; the
    answer position gives the same scores as the per-row form."""
    train = answered(processor)
    per_row = model(**train, rank_item_ids=torch.arange(6), rank_labels=torch.tensor([2, 5]))
    token_level = torch.full_like(train["input_ids"], -100)
    answer = (train["labels"] != -100).long().argmax(-1) - 1
    token_level[0, answer[0]], token_level[1, answer[1]] = 2, 5
    first_item_end = (train["input_ids"][0] == processor.item_token_id).nonzero().flatten()[QUERIES - 1]
    token_level[0, first_item_end] = 1  # after the first history item, the second one ("2" is row 1)
    out = model(**train, rank_item_ids=torch.arange(6), rank_labels=token_level)
    assert out.rank_logits.shape == (3, 6)
    torch.testing.assert_close(out.rank_logits[[1, 2]], per_row.rank_logits, atol=1e-5, rtol=1e-5)
    # the prefix query sees nothing after its position: changing the second item leaves it unchanged
    changed = dict(train, item_ids=train["item_ids"].clone())
    changed["item_ids"][0, 1] = 4
    again = model(**changed, rank_item_ids=torch.arange(6), rank_labels=token_level)
    torch.testing.assert_close(again.rank_logits[0], out.rank_logits[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(again.rank_logits[1], out.rank_logits[1])
    expected = torch.nn.functional.cross_entropy(out.rank_logits, torch.tensor([1, 2, 5]))
    torch.testing.assert_close(out.loss_rank, expected)


def test_collator_labels_each_history_item_with_the_next(processor):
    chat = [{"role": "user", "content": "user <user> liked <item> , <item> and <item> ."}, {"role": "assistant", "content": "Heat (1995)"}]
    rows = [{"task": "next_item_title", "messages": chat, "item_ids": ["1", "2", "4"], "user_ids": ["1"], "target_item_id": "3"}]
    batch = ChatCollator(processor, ranking_negatives=2, ranking_history=True)(rows)
    labelled = (batch["rank_labels"][0] != -100).nonzero().flatten()
    assert batch["rank_labels"][0, labelled].tolist() == [1, 3, 2]  # items "2", "4", then the target "3"
    item_positions = (batch["input_ids"][0] == processor.item_token_id).nonzero().flatten()
    assert labelled[:2].tolist() == [item_positions[QUERIES - 1].item(), item_positions[2 * QUERIES - 1].item()]
    assert labelled[2] == (batch["labels"][0] != -100).long().argmax() - 1
    assert {1, 2, 3} <= set(batch["rank_item_ids"].tolist())


def test_ranking_only_rows_train_the_head_without_an_answer_loss(model, processor):
    """Rows of ranking_only_tasks lose their answer labels and keep a rank label at the answer's
    start; a batch of only such rows has no LM loss (not a NaN mean over nothing), only the head's."""
    chat = [{"role": "user", "content": "user <user> liked <item> and <item> ."}, {"role": "assistant", "content": "Heat (1995)"}]
    rows = [{"task": "next_item_title", "messages": chat, "item_ids": ["1", "2"], "user_ids": ["1"], "target_item_id": "3"}]
    plain = ChatCollator(processor, ranking_negatives=2, ranking_tasks=["next_item_title"])(rows)
    batch = ChatCollator(processor, ranking_negatives=2, ranking_tasks=["next_item_title"], ranking_only_tasks=["next_item_title"])(rows)
    assert (plain["labels"] != -100).any() and (batch["labels"] == -100).all()
    answer_start = (plain["labels"][0] != -100).long().argmax() - 1
    assert (batch["rank_labels"][0] != -100).nonzero().flatten().tolist() == [answer_start.item()] and batch["rank_labels"][0, answer_start] == 2
    out = model(**batch, logits_to_keep=ILMForConditionalGeneration.answer_positions(batch["labels"]))
    assert out.loss_lm is None and torch.isfinite(out.loss_rank)
    torch.testing.assert_close(out.loss, model.config.ranking_loss_weight * out.loss_rank)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.zero_grad()


def test_ranking_only_tasks_must_be_ranked_by_the_head(processor):
    from training.finetune import FinetuneConfig

    with pytest.raises(ValueError, match="ranking_only_tasks"):
        FinetuneConfig(ranking_head=True, ranking_tasks=["next_item_title"], ranking_only_tasks=["candidate_selection"])
    with pytest.raises(ValueError, match="ranking_head=False"):
        FinetuneConfig(ranking_only_tasks=["next_item_title"])
    with pytest.raises(ValueError, match="ranking_negatives=0"):
        FinetuneConfig(ranking_head=True, ranking_negatives=0, ranking_only_tasks=["next_item_title"])
    with pytest.raises(ValueError, match="need ranking_negatives > 0"):
        ChatCollator(processor, ranking_only_tasks=["next_item_title"])
    assert FinetuneConfig(ranking_head=True, ranking_only_tasks=["next_item_title"]).ranking_only_tasks == ["next_item_title"]


@torch.no_grad()
def test_item_encoder_and_head_keep_float32_under_autocast_and_with_a_bfloat16_llm(model, processor):
    import copy

    from training import assets
    from training.evaluate.harness import dtype_name

    inputs = processor(messages=PROMPTS, item_ids=ITEMS, user_ids=USERS)
    ids = torch.arange(len(CATALOG["items"]))
    tokens = model.get_item_tokens(ids)
    queries = torch.nn.functional.normalize(torch.randn(2, 16), dim=-1)
    scores = model.item_scorer(queries, tokens)
    float32_scores = model.score_items(**inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as Trainer's bf16: only the frozen LLM runs in bfloat16
        assert torch.equal(model.get_item_tokens(ids), tokens) and torch.equal(model.item_scorer(queries, tokens), scores)
        assert model.score_items(**inputs).dtype == torch.float32
    bf16 = assets.inference_model(copy.deepcopy(model), "cpu", torch.bfloat16)
    assert dtype_name(bf16) == "bfloat16" and {p.dtype for p in bf16.language_model.parameters()} == {torch.bfloat16}
    assert {p.dtype for n, p in bf16.named_parameters() if not n.startswith("language_model.")} == {torch.float32}
    rounded = bf16.score_items(**inputs)  # only the LLM's hidden states are rounded
    assert rounded.dtype == torch.float32 and not torch.equal(rounded, float32_scores)
    torch.testing.assert_close(rounded, float32_scores, atol=0.3, rtol=0.05)


# --- the ranking warm-up (training/ranking_warmup.py) ---------------------------------------------------


@torch.no_grad()
def test_warmup_trains_the_function_the_new_head_ranks_prompts_by(tiny_components, processor):
    """With its LLM terms at zero, the head's scores of a prompt are the warm-up's item term of the
    prompt's items, whatever else the prompt holds."""
    from training.ranking_warmup import item_term_scores

    model = build(tiny_components, processor, ranking_item_prior=True)
    torch.nn.init.normal_(model.item_scorer.prior[1].weight)  # a prior that is not zero either
    tokens = model.get_item_tokens(torch.arange(len(CATALOG["items"])))
    histories = torch.tensor([processor.rows(ITEMS[0]), processor.rows(ITEMS[1]) + [-1]])
    inputs = processor(messages=PROMPTS, item_ids=ITEMS, user_ids=USERS)
    torch.testing.assert_close(item_term_scores(model.item_scorer, histories, tokens), model.score_items(**inputs))


def warmup_model(tiny_components, data_dir, **config):
    import json

    from safetensors.torch import load_file

    catalog = json.loads((data_dir / "catalog.json").read_text())
    processor = ILMProcessor.from_components(tiny_components["llm"], catalog=catalog, num_query_tokens=QUERIES)
    cf = load_file(str(data_dir / "cf" / "embeddings.safetensors"))
    torch.manual_seed(0)
    model = ILMForConditionalGeneration.from_components(
        tiny_components["llm"], tiny_components["bert"], item_token_id=processor.item_token_id, user_token_id=processor.user_token_id,
        num_query_tokens=QUERIES, item_embeddings=cf["item_embeddings"], user_embeddings=cf["user_embeddings"], ranking_dim=16, **config,
    ).eval()
    return model, processor


def test_warmup_learns_next_items_from_every_train_pair_and_trains_only_the_heads_item_part(tiny_components, data_dir):
    from datasets import load_from_disk

    from training.ranking_warmup import item_term_scores, next_item_pairs, warm_up_ranking_head

    model, processor = warmup_model(tiny_components, data_dir, ranking_head=True, ranking_item_prior=True)
    histories, targets = next_item_pairs(data_dir, processor, history_len=3)
    train = load_from_disk(str(data_dir / "interactions" / "train")).to_pandas()
    sequences = [processor.rows(items) for items in train.groupby("user_id", sort=False)["item_id"].agg(list)]
    assert len(targets) == sum(len(s) - 1 for s in sequences)  # every interaction after a user's first
    first = sequences[0]
    assert targets[: len(first) - 1].tolist() == first[1:]
    assert histories[0].tolist() == [first[0], -1, -1]
    last = len(first) - 1  # the user's last pair: the 3 items before it
    assert histories[last - 1].tolist() == first[max(0, last - 3) : last] + [-1] * max(0, 3 - last)

    tokens = model.get_item_tokens(torch.arange(model.config.num_items)).float().detach()
    full_loss = lambda: torch.nn.functional.cross_entropy(item_term_scores(model.item_scorer, histories, tokens), targets).item()  # noqa: E731
    before_loss = full_loss()
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("item_scorer.")}
    llm_terms = {k: v.clone() for k, v in model.item_scorer.state_dict().items() if k.startswith("query.")}
    summary = warm_up_ranking_head(model, processor, data_dir, 40, batch_size=16, learning_rate=1e-2)
    assert summary["pairs"] == len(targets) and summary["steps"] == 40 and summary["final_loss"] < summary["first_loss"]
    with torch.no_grad():
        assert full_loss() < before_loss - 0.05  # over all pairs, not only the batches it saw
    for key, value in model.state_dict().items():  # the encoder, adapter and LLM as they were
        if key in frozen:
            torch.testing.assert_close(value, frozen[key], rtol=0, atol=0)
    for key, value in model.item_scorer.state_dict().items():
        if key in llm_terms:  # the LLM terms still start at zero in phase 2
            torch.testing.assert_close(value, llm_terms[key], rtol=0, atol=0)
    assert not model.training  # left as it was


def test_warmup_refuses_a_model_without_a_new_head(tiny_components, data_dir):
    from training.finetune import FinetuneConfig
    from training.ranking_warmup import warm_up_ranking_head

    model, processor = warmup_model(tiny_components, data_dir)
    with pytest.raises(ValueError, match="ranking_warmup_steps: 0"):
        warm_up_ranking_head(model, processor, data_dir, 1)
    model, processor = warmup_model(tiny_components, data_dir, ranking_head=True)
    with torch.no_grad():
        model.item_scorer.query["answer"][1].weight.add_(0.1)  # a head that has learned to read the LLM
    with pytest.raises(ValueError, match="already reads the LLM.*ranking_warmup_steps: 0"):
        warm_up_ranking_head(model, processor, data_dir, 1)
    with pytest.raises(ValueError, match="ranking_head is False: set ranking_head: true, or ranking_warmup_steps: 0"):
        FinetuneConfig(ranking_warmup_steps=1)
    with pytest.raises(ValueError, match="ranking_warmup_steps must be a whole number >= 0"):
        FinetuneConfig(ranking_head=True, ranking_warmup_steps=-5)


def test_pair_loss_ranks_train_pairs_with_the_heads_item_part_and_trains_the_encoder(tiny_components, data_dir):
    from training.ranking_warmup import PairRankingLoss, item_term_scores, next_item_pairs

    model, processor = warmup_model(tiny_components, data_dir, ranking_head=True, ranking_item_prior=True)
    histories, targets = next_item_pairs(data_dir, processor, history_len=3)
    with torch.no_grad():  # LLM terms that are not zero: the pair loss ranks by the item part alone
        for part in model.item_scorer.query.values():
            torch.nn.init.normal_(part[1].weight)
    # one pair, and negatives enough to draw every catalog item: the loss is the full softmax's
    one_pair = PairRankingLoss(histories[5:6], targets[5:6], batch_size=4, negatives=50 * model.config.num_items, weight=2.0)
    everything = model.get_item_tokens(torch.arange(model.config.num_items)).float()
    expected = 2.0 * torch.nn.functional.cross_entropy(item_term_scores(model.item_scorer, histories[5:6], everything), targets[5:6])
    torch.testing.assert_close(one_pair(model, step=0), expected)

    pairs = PairRankingLoss(histories, targets, batch_size=8, negatives=16, weight=1.0, seed=3)
    assert pairs(model, 1).item() == pairs(model, 1).item() != pairs(model, 2).item()  # the step seeds the draw
    halves = [pairs(model, 1, part, 2).item() for part in (0, 1)]  # a step split in equal parts: its mean
    assert halves[0] != halves[1] and sum(halves) / 2 == pytest.approx(pairs(model, 1).item(), rel=1e-6)
    with pytest.raises(ValueError, match="ranking_pairs_per_step=8 must split evenly over the step's 3 micro-batches"):
        pairs(model, 1, 0, 3)
    model.train()
    for train_adapter in (False, True):
        model.zero_grad(set_to_none=True)
        PairRankingLoss(histories, targets, 8, 16, 1.0, seed=3, train_adapter=train_adapter)(model, 1).backward()
        grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
        assert all(p.requires_grad for p in model.adapter.parameters())  # as it was
        for prefix in ("item_encoder.", "item_scorer.key.", "item_scorer.prior.", *["adapter."] * train_adapter):  # through the item tokens
            assert any(g is not None and g.abs().sum() > 0 for name, g in grads.items() if name.startswith(prefix)), prefix
        untouched = ("item_scorer.query.", "language_model.", *["adapter."] * (not train_adapter))
        assert all(g is None for name, g in grads.items() if name.startswith(untouched))

    def full_loss():  # over every pair, not only the drawn ones
        with torch.no_grad():
            tokens = model.get_item_tokens(torch.arange(model.config.num_items)).float()
            return torch.nn.functional.cross_entropy(item_term_scores(model.item_scorer, histories, tokens), targets).item()

    before = full_loss()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(30):
        optimizer.zero_grad()
        pairs(model, step).backward()
        optimizer.step()
    assert full_loss() < before - 0.05


def test_pair_loss_options_are_checked_early(tiny_components, data_dir):
    from training.finetune import FinetuneConfig
    from training.ranking_warmup import PairRankingLoss

    with pytest.raises(ValueError, match="ranking_head is False: set ranking_head: true, or ranking_pairs_per_step: 0"):
        FinetuneConfig(ranking_pairs_per_step=8)
    with pytest.raises(ValueError, match="ranking_pairs_per_step must be a whole number >= 0"):
        FinetuneConfig(ranking_head=True, ranking_pairs_per_step=2.5)
    with pytest.raises(ValueError, match="ranking_pairs_loss_weight must be > 0"):
        FinetuneConfig(ranking_head=True, ranking_pairs_per_step=8, ranking_pairs_loss_weight=0)
    model, processor = warmup_model(tiny_components, data_dir, ranking_head=True, ranking_item_similarity=False)
    with pytest.raises(ValueError, match="ranking_item_similarity, or ranking_pairs_per_step: 0"):
        PairRankingLoss.for_model(model, processor, data_dir, batch_size=8, negatives=8, weight=1.0)
