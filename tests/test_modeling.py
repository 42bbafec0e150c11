"""ILMForConditionalGeneration on tiny random components: both adapter types through the same tests."""

import os
import re
import textwrap

import pytest
import torch
from tiny import CATALOG
from transformers import AutoModel, AutoModelForCausalLM, BertModel

from modeling_ilm import ILMConfig, ILMForConditionalGeneration, ILMProcessor
from training.publish import run_without_package

QUERIES = 2
CHATS = [
    [{"role": "user", "content": "what movie is <item> ?"}],
    [{"role": "user", "content": "user <user> liked <item> and <item> . recommend a comedy"}],
    [{"role": "user", "content": "hello world , my name is"}],
]
ITEMS = [["1"], ["2", "3"], []]
USERS = [[], ["1"], []]


@pytest.fixture(scope="module")
def processor(tiny_components):
    return ILMProcessor.from_components(tiny_components["llm"], catalog=CATALOG, num_query_tokens=QUERIES)


def build(tiny_components, processor, adapter_type="qformer", seed=0, **config_kwargs):
    torch.manual_seed(seed)
    return ILMForConditionalGeneration.from_components(
        tiny_components["llm"],
        tiny_components["bert"],
        item_token_id=processor.item_token_id,
        user_token_id=processor.user_token_id,
        num_query_tokens=QUERIES,
        adapter_type=adapter_type,
        mlp_hidden_size=16,
        item_embeddings=torch.randn(len(CATALOG["items"]), 8),
        user_embeddings=torch.randn(len(CATALOG["users"]), 8),
        **config_kwargs,
    ).eval()


@pytest.fixture(scope="module", params=["qformer", "mlp"])
def model(request, tiny_components, processor):
    return build(tiny_components, processor, request.param)


def test_shapes(model, processor):
    batch = processor(messages=CHATS, item_ids=ITEMS, user_ids=USERS)
    out = model(**batch)
    assert out.logits.shape == (3, batch["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert out.item_tokens.shape == (3, QUERIES, model.config.text_config.hidden_size)  # 3 items in the batch
    assert out.user_tokens.shape == (1, QUERIES, model.config.text_config.hidden_size)
    assert model.get_item_tokens(torch.arange(6)).shape == (6, QUERIES, model.config.text_config.hidden_size)


def test_item_tokens_land_on_placeholders(model, processor):
    batch = processor(messages=CHATS[:2], item_ids=ITEMS[:2], user_ids=USERS[:2])
    seen = {}
    hook = model.language_model.register_forward_pre_hook(lambda m, a, kw: seen.update(embeds=kw["inputs_embeds"]), with_kwargs=True)
    model(**batch)
    hook.remove()
    expected = model.get_item_tokens(torch.tensor([1, 2])).reshape(-1, model.config.text_config.hidden_size)
    row1 = batch["input_ids"][1] == processor.item_token_id
    torch.testing.assert_close(seen["embeds"][1][row1], expected)  # batch of 3 vs 2: float-level equal


def test_placeholder_count_mismatch_is_a_clear_error(model, processor):
    batch = processor(messages=CHATS[:1], item_ids=ITEMS[:1])
    with pytest.raises(ValueError, match="placeholders per row"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], item_ids=torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="no `item_ids`"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    two = processor(messages=CHATS[1:2], item_ids=ITEMS[1:2], user_ids=USERS[1:2])  # two items, one id: too few columns
    assert two["item_ids"].shape == (1, 2)
    with pytest.raises(ValueError, match=r"placeholders per row \[2\] do not match the item_ids given per row \[1\]"):
        model(input_ids=two["input_ids"], item_ids=two["item_ids"][:, :1], user_ids=two["user_ids"])
    with pytest.raises(ValueError, match="1 slots per row but a row has 2 placeholders"):
        model(input_ids=two["input_ids"], item_tokens=model.get_item_tokens(two["item_ids"][0, :1])[None], user_ids=two["user_ids"])
    half = batch["input_ids"].clone()
    half[0, (half[0] == processor.item_token_id).nonzero()[0]] = 5  # one placeholder not expanded
    with pytest.raises(ValueError, match="expanded"):
        model(input_ids=half, item_ids=batch["item_ids"])
    with pytest.raises(ValueError, match="outside the CF table"):
        model(input_ids=batch["input_ids"], item_ids=torch.tensor([[17]]))


def test_loss_only_on_answer_tokens(model, processor):
    chat = CHATS[0] + [{"role": "assistant", "content": "toy story"}]
    batch = processor(messages=[chat], item_ids=[["1"]], return_labels=True, add_generation_prompt=False)
    labelled = processor.tokenizer.convert_ids_to_tokens(batch["input_ids"][0][batch["labels"][0] != -100])
    assert labelled == ["toy", "story", "<|im_end|>"]
    out = model(**batch)
    logits = out.logits[0, :-1]
    targets = batch["labels"][0, 1:]
    keep = targets != -100
    manual = torch.nn.functional.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(out.loss, manual)


def test_loss_from_answer_logits_only_equals_the_full_loss(model, processor):
    chats = [CHATS[0] + [{"role": "assistant", "content": "toy story"}], CHATS[1] + [{"role": "assistant", "content": "heat"}]]
    batch = processor(messages=chats, item_ids=ITEMS[:2], user_ids=USERS[:2], return_labels=True, add_generation_prompt=False, padding_side="right")
    keep = ILMForConditionalGeneration.answer_positions(batch["labels"])
    assert 0 < len(keep) < batch["input_ids"].shape[1] / 2  # right padding: the rows' answers sit in different columns

    def loss_and_grads(**kwargs):
        model.zero_grad()
        loss = model(**batch, **kwargs).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full, full_grads = loss_and_grads()
    kept, kept_grads = loss_and_grads(logits_to_keep=keep)
    torch.testing.assert_close(kept, full, rtol=1e-6, atol=1e-6)
    assert kept_grads.keys() == full_grads.keys() and kept_grads
    for name in full_grads:
        torch.testing.assert_close(kept_grads[name], full_grads[name], rtol=1e-5, atol=1e-7)
    assert model(**batch, logits_to_keep=keep).logits.shape[1] == len(keep)
    with pytest.raises(ValueError, match="leaves out positions that predict labels"):
        model(**batch, logits_to_keep=keep[1:])
    with pytest.raises(ValueError, match="leaves out positions that predict labels"):
        model(**batch, logits_to_keep=1)  # the last column alone: right padding puts answers earlier
    model.zero_grad()


def test_logits_to_keep_as_a_count_gives_the_last_columns_of_the_full_logits(model, processor):
    batch = processor(messages=CHATS[:2], item_ids=ITEMS[:2], user_ids=USERS[:2], add_generation_prompt=True)
    with torch.no_grad():
        full = model(**batch).logits
        length = full.shape[1]
        for n in (1, 3, length + 5):  # a count above the length keeps every column, as the LLM's slice does
            torch.testing.assert_close(model(**batch, logits_to_keep=n).logits, full[:, -n:], rtol=1e-5, atol=1e-5)


def test_gradients_reach_encoder_and_adapter_not_llm(model, processor):
    model.train()
    chat = CHATS[1] + [{"role": "assistant", "content": "heat"}]
    batch = processor(messages=[chat], item_ids=[ITEMS[1]], user_ids=[USERS[1]], return_labels=True, add_generation_prompt=False)
    model.zero_grad()
    model(**batch).loss.backward()
    assert all(p.grad is None for p in model.language_model.parameters())
    assert not model.language_model.training  # frozen: no dropout either
    assert model.cf_embeddings.items.weight.grad is None  # CF tables are frozen data
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(not n.startswith(("language_model.", "cf_embeddings.")) for n in trained)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in trained.items() if n.startswith("adapter."))
    if model.item_encoder is not None:
        enc = model.item_encoder
        assert enc.query_tokens.grad.abs().sum() > 0
        assert enc.cf_projection.weight.grad.abs().sum() > 0
        assert enc.qformer.encoder.layer[0].crossattention.attention.key.weight.grad.abs().sum() > 0
    model.eval()


def test_text_only_logits_equal_base_llm(model, processor, tiny_components):
    base = AutoModelForCausalLM.from_pretrained(tiny_components["llm"]).eval()
    batch = processor(messages=CHATS[2:])
    with torch.no_grad():
        diff = (model(**batch).logits - base(**batch).logits).abs().max().item()
    assert diff == 0.0


def test_greedy_generate_with_cache_equals_without(model, processor):
    batch = processor(messages=CHATS[:2], item_ids=ITEMS[:2], user_ids=USERS[:2])
    with_cache = model.generate(**batch, max_new_tokens=6, do_sample=False, use_cache=True)
    without = model.generate(**batch, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(with_cache, without)


def test_batched_left_padded_generation_equals_one_by_one(model, processor):
    batch = processor(messages=CHATS, item_ids=ITEMS, user_ids=USERS)
    assert (batch["attention_mask"][:, 0] == 0).any()  # really padded, on the left
    batched = model.generate(**batch, max_new_tokens=5, do_sample=False)[:, batch["input_ids"].shape[1]:]
    for i in range(3):
        one = processor(messages=[CHATS[i]], item_ids=[ITEMS[i]], user_ids=[USERS[i]])
        alone = model.generate(**one, max_new_tokens=5, do_sample=False)[:, one["input_ids"].shape[1]:]
        assert torch.equal(alone[0], batched[i])


def test_precomputed_item_tokens_generate_the_same(model, processor):
    batch = processor(messages=CHATS[:2], item_ids=ITEMS[:2], user_ids=USERS[:2])
    catalog = model.get_item_tokens(torch.arange(6))
    item_tokens = catalog[batch["item_ids"].clamp(min=0)]
    expected = model.generate(**batch, max_new_tokens=5, do_sample=False)
    inputs = {k: v for k, v in batch.items() if k != "item_ids"}
    assert torch.equal(model.generate(**inputs, item_tokens=item_tokens, max_new_tokens=5, do_sample=False), expected)


def test_raw_cf_vectors_for_items_outside_the_table(model, processor):
    batch = processor(messages=CHATS[:1], item_ids=ITEMS[:1])
    vector = model.cf_embeddings.items.weight[0].view(1, 1, -1)
    by_id = model(**batch).logits
    inputs = {k: v for k, v in batch.items() if k != "item_ids"}
    assert torch.equal(model(**inputs, item_embeds=vector).logits, by_id)


def test_beam_search_and_sampling_run_with_items(model, processor):
    batch = processor(messages=CHATS[:2], item_ids=ITEMS[:2], user_ids=USERS[:2])
    beams = model.generate(**batch, max_new_tokens=4, num_beams=3, num_return_sequences=2, do_sample=False)
    assert beams.shape[0] == 4
    torch.manual_seed(0)
    sampled = model.generate(**batch, max_new_tokens=4, do_sample=True, top_k=5, temperature=0.7)
    assert sampled.shape[0] == 2


@pytest.mark.parametrize("light", [False, True])
def test_save_load_round_trip_is_bit_identical(model, processor, tmp_path, light):
    model.save_pretrained(tmp_path, include_language_model=not light)
    files = sorted(os.listdir(tmp_path))
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    assert "modeling_ilm.py" in files and "configuration_ilm.py" in files
    loaded = ILMForConditionalGeneration.from_pretrained(tmp_path).eval()
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        has_llm = any(k.startswith("language_model.") for k in f.keys())
    assert has_llm is not light
    assert not any(p.requires_grad for p in loaded.language_model.parameters())  # still frozen after loading
    assert not loaded.cf_embeddings.items.weight.requires_grad
    batch = processor(messages=CHATS, item_ids=ITEMS, user_ids=USERS)
    with torch.no_grad():
        assert (model(**batch).logits - loaded(**batch).logits).abs().max().item() == 0.0
    assert torch.equal(model.generate(**batch, max_new_tokens=4, do_sample=False), loaded.generate(**batch, max_new_tokens=4, do_sample=False))


@pytest.mark.parametrize("light", [False, True])
def test_loading_honours_attn_implementation(model, tmp_path, light):
    model.save_pretrained(tmp_path, include_language_model=not light)
    for attention in ("eager", "sdpa"):
        loaded = ILMForConditionalGeneration.from_pretrained(tmp_path, attn_implementation=attention)
        assert loaded.language_model.config._attn_implementation == attention
    half = ILMForConditionalGeneration.from_pretrained(tmp_path, device_map="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in half.language_model.parameters()} == {torch.bfloat16}
    # the item encoder and adapter stay float32 (_keep_in_fp32_modules_strict), as evaluation runs them
    assert {p.dtype for n, p in half.named_parameters() if not n.startswith("language_model.")} == {torch.float32}
    if light:  # what a light folder cannot honour is refused by name, never ignored
        for bad in ({"device_map": "auto"}, {"low_cpu_mem_usage": True}):
            with pytest.raises(ValueError, match="light checkpoint .*" + re.escape(str(list(bad)[0]))):
                ILMForConditionalGeneration.from_pretrained(tmp_path, **bad)


@pytest.mark.parametrize("light", [False, True])
def test_a_truncated_weights_file_is_an_error_naming_the_folder(model, tmp_path, light):
    model.save_pretrained(tmp_path, include_language_model=not light)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(OSError, match=f"{tmp_path} cannot be read .*truncated or corrupt"):
        ILMForConditionalGeneration.from_pretrained(tmp_path)


def test_processor_calls_leave_the_tokenizer_as_it_was(processor):
    side = processor.tokenizer.padding_side
    for padding_side in ("left", "right"):
        processor(messages=CHATS, item_ids=ITEMS, user_ids=USERS, padding_side=padding_side)
        assert processor.tokenizer.padding_side == side
    left = processor(messages=CHATS, item_ids=ITEMS, user_ids=USERS, padding_side="left")["attention_mask"]
    right = processor(messages=CHATS, item_ids=ITEMS, user_ids=USERS, padding_side="right")["attention_mask"]
    assert (left[:, -1] == 1).all() and (right[:, 0] == 1).all() and not torch.equal(left, right)


def test_auto_classes(model, tmp_path):
    model.save_pretrained(tmp_path)
    assert type(AutoModel.from_pretrained(tmp_path)) is ILMForConditionalGeneration
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path)) is ILMForConditionalGeneration
    config = ILMConfig.from_pretrained(tmp_path)
    for auto_class in ("AutoModel", "AutoModelForCausalLM"):
        assert config.auto_map[auto_class] == "modeling_ilm.ILMForConditionalGeneration"
    assert config.auto_map["AutoModelForPreTraining"] == "modeling_ilm.ILMForItemTextPretraining"
    assert config.custom_pipelines["text-generation"]["impl"] == "pipeline_ilm.ILMPipeline"
    assert {"pipeline_ilm.py", "constrained_decoding.py"} <= {p.name for p in tmp_path.glob("*.py")}


def test_trust_remote_code_load_without_the_package(model, processor, tmp_path):
    """A fresh process where `modeling_ilm` is not importable loads model and processor from the folder."""
    model.save_pretrained(tmp_path / "ilm")
    processor.save_pretrained(tmp_path / "ilm")
    batch = processor(messages=CHATS, item_ids=ITEMS, user_ids=USERS)
    torch.save(dict(batch), tmp_path / "batch.pt")
    with torch.no_grad():
        torch.save(model(**batch).logits, tmp_path / "logits.pt")
    one = processor(messages=CHATS[1], item_ids=ITEMS[1], user_ids=USERS[1])
    answer = processor.decode(model.generate(**one, max_new_tokens=6, do_sample=False)[0, one["input_ids"].shape[1] :]).strip()
    first = processor(messages=CHATS[0], item_ids=ITEMS[0])  # recommend: decoded among catalog titles
    constraint = processor.title_constraint(first["input_ids"])
    recommended = processor.decode(model.generate(**first, max_new_tokens=32, logits_processor=constraint)[0, first["input_ids"].shape[1] :]).strip()
    script = textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModel, AutoProcessor
        model = AutoModel.from_pretrained({str(tmp_path / 'ilm')!r}, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained({str(tmp_path / 'ilm')!r}, trust_remote_code=True)
        batch = torch.load({str(tmp_path / 'batch.pt')!r})
        again = processor(messages={CHATS!r}, item_ids={ITEMS!r}, user_ids={USERS!r})
        assert all(torch.equal(again[k], batch[k]) for k in batch), "processor differs"
        with torch.no_grad():
            diff = (model(**batch).logits - torch.load({str(tmp_path / 'logits.pt')!r})).abs().max().item()
        print(type(model).__module__, type(processor).__name__, "maxdiff", diff)
        assert diff == 0.0
        from transformers import AutoModelForCausalLM, pipeline
        assert type(AutoModelForCausalLM.from_pretrained({str(tmp_path / 'ilm')!r}, trust_remote_code=True)) is type(model)
        pipe = pipeline("text-generation", model={str(tmp_path / 'ilm')!r}, trust_remote_code=True)
        out = pipe({CHATS[1]!r}, item_ids={ITEMS[1]!r}, user_ids={USERS[1]!r}, max_new_tokens=6)
        assert out["generated_text"] == {answer!r}, out
        rec = pipe({CHATS[0]!r}, item_ids={ITEMS[0]!r}, recommend=True)
        assert rec["generated_text"] == {recommended!r}, rec
        print("pipeline", type(pipe).__name__)
        """
    )
    result = run_without_package(script, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "transformers_modules" in result.stdout and "maxdiff 0.0" in result.stdout and "pipeline ILMPipeline" in result.stdout


def test_qformer_text_mode_starts_as_the_pretrained_bert(tiny_components, processor):
    """Self-attention/FFN/embeddings come from BERT: the unimodal text path reproduces it exactly."""
    model = build(tiny_components, processor)
    bert = BertModel.from_pretrained(tiny_components["bert"]).eval()
    ids = torch.tensor([[1, 5, 9, 14, 2], [1, 7, 3, 0, 0]])
    mask = (ids != 0).long()
    mask[0] = 1
    expected = bert(input_ids=ids, attention_mask=mask).last_hidden_state
    got = model.item_encoder(input_ids=ids, attention_mask=mask, mode="text").last_hidden_state
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=1e-5)


def test_causal_mode_hides_text_from_queries(tiny_components, processor):
    model = build(tiny_components, processor)
    enc = model.item_encoder
    hidden = torch.zeros(1, QUERIES + 3, 4)
    mask = enc.attention_mask(hidden, QUERIES, torch.ones(1, 3), causal=True)[0, 0] == 0
    assert not mask[:QUERIES, QUERIES:].any()  # queries never see text
    assert mask[QUERIES:, :QUERIES].all()  # text sees every query
    assert torch.equal(mask[QUERIES:, QUERIES:], torch.tril(torch.ones(3, 3, dtype=torch.bool)))
    # and behaviourally: changing the text leaves the query outputs unchanged
    cf = torch.randn(1, 8)
    a = enc(cf, input_ids=torch.tensor([[1, 5, 9]]), mode="causal").last_hidden_state
    b = enc(cf, input_ids=torch.tensor([[1, 6, 11]]), mode="causal").last_hidden_state
    torch.testing.assert_close(a[:, :QUERIES], b[:, :QUERIES])
    assert not torch.allclose(a[:, QUERIES + 1 :], b[:, QUERIES + 1 :])
    multimodal = enc(cf, input_ids=torch.tensor([[1, 6, 11]]), mode="multimodal").last_hidden_state
    assert not torch.allclose(multimodal[:, :QUERIES], b[:, :QUERIES])  # in matching mode queries do see text


def test_cf_residual_adds_each_cf_token_to_its_query_output(tiny_components, processor):
    plain = build(tiny_components, processor, num_cf_tokens=QUERIES)
    residual = build(tiny_components, processor, num_cf_tokens=QUERIES, cf_residual=True)
    torch.testing.assert_close(dict(residual.state_dict()), dict(plain.state_dict()))  # the path adds no weights
    cf, text = torch.randn(3, 8), torch.tensor([[1, 5, 9]] * 3)
    cf_tokens = plain.item_encoder.cf_tokens(cf)
    for mode in ("query", "multimodal", "causal"):
        got = residual.item_encoder(cf, input_ids=text, mode=mode).last_hidden_state
        expected = plain.item_encoder(cf, input_ids=text, mode=mode).last_hidden_state
        torch.testing.assert_close(got[:, :QUERIES], expected[:, :QUERIES] + cf_tokens)
        torch.testing.assert_close(got[:, QUERIES:], expected[:, QUERIES:])  # text states are untouched
    ids = torch.tensor([1, 2])
    assert not torch.allclose(residual.get_item_tokens(ids), plain.get_item_tokens(ids))  # and reaches the LLM
    with pytest.raises(ValueError, match="num_cf_tokens=4 equal to num_query_tokens=2"):
        ILMConfig(num_query_tokens=2, num_cf_tokens=4, cf_residual=True)


@pytest.mark.parametrize("adapter_type", ["qformer", "mlp"])
def test_cf_scale_keeps_the_length_of_cf_vectors_that_layer_norm_drops(tiny_components, processor, adapter_type, tmp_path):
    table = torch.randn(len(CATALOG["items"]), 8)
    scaled = build(tiny_components, processor, adapter_type, cf_scale="table")
    assert scaled.config.cf_scale == pytest.approx(scaled.cf_embeddings.items.weight.pow(2).mean().sqrt().item())
    normed = build(tiny_components, processor, adapter_type)
    direction = table[:1]
    with torch.no_grad():
        # the same direction at two lengths (in ALS: a rarely and an often picked item)
        short, long = (scaled.encode_cf(direction * length) for length in (0.5, 2.0))
        assert not torch.allclose(short, long, atol=1e-4)
        short, long = (normed.encode_cf(direction * length) for length in (0.5, 2.0))
        torch.testing.assert_close(short, long, atol=1e-4, rtol=1e-4)  # layer norm sees one vector
    scaled.save_pretrained(tmp_path)
    reloaded = ILMForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert reloaded.config.cf_scale == scaled.config.cf_scale
    with torch.no_grad():
        torch.testing.assert_close(reloaded.encode_cf(direction), scaled.encode_cf(direction))
    with pytest.raises(ValueError, match="cf_scale=0: give a positive number"):
        ILMConfig(cf_scale=0)
    with pytest.raises(ValueError, match="cf_scale=True: give a positive number"):
        ILMConfig(cf_scale=True)  # a bool is an int to Python, not a scale
    with pytest.raises(ValueError, match="cf_scale='table': give a positive number"):
        ILMConfig(cf_scale="table")  # only from_components has the table to take the RMS of
    with pytest.raises(ValueError, match='cf_scale="table" needs item_embeddings'):
        ILMForConditionalGeneration.from_components(tiny_components["llm"], tiny_components["bert"], cf_scale="table")


def test_class_docstring_example_runs(tiny_components, tmp_path):
    """The example in ILMForConditionalGeneration's docstring, run as written on a tiny saved folder."""
    titles = ["heat", "babe", "casino", "toy story", "jumanji", "sabrina"]
    catalog = {"items": [{"item_id": i, "title": t} for i, t in zip(["50", "181", "1", "2", "3", "4"], titles)], "users": [{"user_id": "1"}]}
    processor = ILMProcessor.from_components(tiny_components["llm"], catalog=catalog, num_query_tokens=QUERIES)
    torch.manual_seed(0)
    model = ILMForConditionalGeneration.from_components(
        tiny_components["llm"], tiny_components["bert"], item_token_id=processor.item_token_id, user_token_id=processor.user_token_id,
        num_query_tokens=QUERIES, item_embeddings=torch.randn(6, 8), user_embeddings=torch.randn(1, 8),
    )
    model.enable_ranking_head(ranking_dim=8)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    lines = [line.strip()[4:] for line in ILMForConditionalGeneration.__doc__.splitlines() if line.strip().startswith(">>> ")]
    example = "\n".join(lines).replace("runs/ml100k/model", str(tmp_path / "model"))
    namespace = {}
    exec(example, namespace)
    assert namespace["item_id"] in (None, *[item["item_id"] for item in catalog["items"]])
    assert namespace["scores"].shape == (1, 6) and len(namespace["top"]) == 5 and set(namespace["top"]) <= set(titles)
