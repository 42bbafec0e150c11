"""Optional LoRA on the LLM through peft: trains, saves and loads with the item encoder, and the
text-only == base LLM property comes back when the adapter is disabled."""

import pytest
import torch
from tiny import CATALOG
from transformers import AutoModelForCausalLM

from modeling_ilm import ILMForConditionalGeneration, ILMProcessor

LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
TEXT = [[{"role": "user", "content": "hello world , my name is"}]]


@pytest.fixture(scope="module")
def processor(tiny_components):
    return ILMProcessor.from_components(tiny_components["llm"], catalog=CATALOG, num_query_tokens=2)


@pytest.fixture()
def lora_model(tiny_components, processor):
    torch.manual_seed(0)
    model = ILMForConditionalGeneration.from_components(
        tiny_components["llm"], tiny_components["bert"], item_token_id=processor.item_token_id, user_token_id=processor.user_token_id,
        num_query_tokens=2, item_embeddings=torch.randn(6, 8), user_embeddings=torch.randn(4, 8),
    )
    model.enable_lora(**LORA)
    # one optimizer step so the LoRA weights are not the identity
    chat = [{"role": "user", "content": "what movie is <item> ?"}, {"role": "assistant", "content": "heat"}]
    batch = processor(messages=[chat], item_ids=[["3"]], return_labels=True, add_generation_prompt=False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    model(**batch).loss.backward()
    optimizer.step()
    return model.eval()


def test_only_lora_and_encoder_train(lora_model):
    trainable = [n for n, p in lora_model.named_parameters() if p.requires_grad]
    llm_trainable = [n for n in trainable if n.startswith("language_model.")]
    assert llm_trainable and all("lora_" in n for n in llm_trainable)
    assert any(n.startswith("item_encoder.") for n in trainable)


def test_lora_changes_text_outputs_and_disabling_restores_the_base_llm(lora_model, processor, tiny_components):
    base = AutoModelForCausalLM.from_pretrained(tiny_components["llm"]).eval()
    batch = processor(messages=TEXT)
    with torch.no_grad():
        assert (lora_model(**batch).logits - base(**batch).logits).abs().max() > 0  # documented: lost with LoRA
        with lora_model.language_model.disable_adapter():
            assert (lora_model(**batch).logits - base(**batch).logits).abs().max().item() == 0.0


@pytest.mark.parametrize("light", [False, True])
def test_lora_save_load_round_trip(lora_model, processor, tmp_path, light):
    lora_model.save_pretrained(tmp_path, include_language_model=not light)
    loaded = ILMForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.lora_config["r"] == 4
    batch = processor(messages=[[{"role": "user", "content": "what movie is <item> ?"}]], item_ids=[["3"]])
    with torch.no_grad():
        assert (lora_model(**batch).logits - loaded(**batch).logits).abs().max().item() == 0.0


def test_lora_is_saved_as_a_standard_peft_adapter_of_the_llm(lora_model, processor, tiny_components, tmp_path):
    """`llm_adapter/` holds the LoRA the PEFT way: it applies to the bare base LLM with PeftModel,
    and `load_adapter` puts it on an ILM without LoRA, bit-identically."""
    from peft import PeftModel

    lora_model.save_pretrained(tmp_path)
    adapter = tmp_path / "llm_adapter"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter.iterdir()}
    text = processor(messages=TEXT)
    with torch.no_grad():
        expected = lora_model(**text).logits
        base = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_components["llm"]), adapter).eval()
        assert (base(**text).logits - expected).abs().max().item() == 0.0

    torch.manual_seed(0)  # the same encoder as lora_model's before its training step, without LoRA
    plain = ILMForConditionalGeneration.from_components(
        tiny_components["llm"], tiny_components["bert"], item_token_id=processor.item_token_id, user_token_id=processor.user_token_id,
        num_query_tokens=2, item_embeddings=torch.randn(6, 8), user_embeddings=torch.randn(4, 8),
    ).eval()
    plain.load_adapter(adapter)
    assert plain.config.lora_config["r"] == 4
    assert all(not p.requires_grad for n, p in plain.language_model.named_parameters() if "lora_" not in n)
    with torch.no_grad():
        assert (plain(**text).logits - expected).abs().max().item() == 0.0
    plain.save_pretrained(tmp_path / "again")  # and it now travels with the model
    with torch.no_grad():
        assert (ILMForConditionalGeneration.from_pretrained(tmp_path / "again")(**text).logits - expected).abs().max().item() == 0.0


def test_an_adapter_for_another_llm_is_a_clear_error(lora_model, tiny_components, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    get_peft_model(other, LoraConfig(**LORA)).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="does not fit this model's LLM"):
        lora_model.load_adapter(tmp_path / "other", adapter_name="other")
