"""Tiny vocabulary, chat template, tokenizer and catalog that the tests share (as transformers'
model testers do); the pytest fixtures built from them live in conftest.py."""

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
WORDS = (
    "what movie is this the a user has watched and liked next recommend title genre year rating comedy drama "
    "toy story heat casino babe jumanji sabrina , . ? ! : 1 2 3 4 5 1995 1996 hello world my name"
).split()
CATALOG = {
    "items": [
        {"item_id": str(i), "title": title}
        for i, title in enumerate(["Toy Story (1995)", "Jumanji (1995)", "Heat (1995)", "Sabrina (1995)", "Casino (1995)", "Babe (1995)"], 1)
    ],
    "users": [{"user_id": str(u)} for u in range(1, 5)],
}


def make_tokenizer():
    specials = ["<unk>", "<|im_start|>", "<|im_end|>"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(specials + ["\n", "system", "user", "assistant"] + WORDS))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<|im_end|>", pad_token="<|im_end|>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tokenizer.chat_template = CHATML
    return tokenizer
