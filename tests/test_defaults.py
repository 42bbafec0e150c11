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
