"""Tiny random components (seconds to build) shared by the unit tests, as in transformers' model testers,
and a data build of the generic fixture files."""

from pathlib import Path

import pytest
import torch
from tiny import WORDS, make_tokenizer
from transformers import BertConfig, BertModel, BertTokenizerFast, LlamaConfig, LlamaForCausalLM


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """`training.data build` of tests/fixtures/data/generic (tiny CF); modules needing other data override it."""
    from training.data import build_dataset

    source = Path(__file__).parent / "fixtures" / "data" / "generic"
    out = tmp_path_factory.mktemp("data") / "data"
    build_dataset(out, interactions=source / "interactions.csv", items=source / "items.csv", users=source / "users.csv", cf_dim=8, cf_iterations=3)
    return out


@pytest.fixture(scope="session")
def tiny_components(tmp_path_factory):
    """Paths of a tiny Llama (+ tokenizer) and a tiny BERT, saved like Hub checkpoints."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("components")
    tokenizer = make_tokenizer()
    llm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
        )
    )
    llm.generation_config.eos_token_id = tokenizer.eos_token_id
    llm.generation_config.pad_token_id = tokenizer.pad_token_id
    llm.save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    bert = BertModel(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64))
    bert.save_pretrained(root / "bert")
    bert_vocab = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [w for w in dict.fromkeys(WORDS) if w.isalnum()]
    (root / "bert" / "vocab.txt").write_text("\n".join(bert_vocab[:99]) + "\n")
    BertTokenizerFast(vocab_file=str(root / "bert" / "vocab.txt")).save_pretrained(root / "bert")
    return {"llm": str(root / "llm"), "bert": str(root / "bert")}

