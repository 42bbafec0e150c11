"""Processor for ILM: the LLM's tokenizer plus the item catalog.

Prompts are text or chat `messages` with `<item>` / `<user>` placeholders, one per entity, and
the ids they refer to. Each placeholder is expanded to `num_query_tokens` copies (the model
scatters that many item tokens there), and ids become rows of the model's CF tables.
"""

import difflib
import re
import unicodedata

import torch
from transformers import AutoTokenizer
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin


def normalize_title(text: str) -> str:
    """Lower-case, accents and punctuation dropped, whitespace collapsed: for matching titles."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


class ILMProcessor(ProcessorMixin):
    r"""
    Args:
        tokenizer: the frozen LLM's tokenizer, with the placeholder tokens added as special tokens.
        catalog (`dict`): `{"items": [{"item_id": str, "title": str, ...}, ...], "users": [{"user_id": str, ...}]}`.
            List order is the row order of the model's CF tables.
        num_query_tokens (`int`): tokens per item/user (the model config's `num_query_tokens`).
        item_token / user_token (`str`): the placeholders.
    """

    tokenizer_class = "AutoTokenizer"

    def __init__(self, tokenizer=None, catalog=None, num_query_tokens=8, item_token="<item>", user_token="<user>", chat_template=None):
        self.catalog = catalog or {"items": [], "users": []}
        self.num_query_tokens = num_query_tokens
        self.item_token, self.user_token = item_token, user_token
        super().__init__(tokenizer, chat_template=chat_template or getattr(tokenizer, "chat_template", None))
        for token in (item_token, user_token):
            if tokenizer.convert_tokens_to_ids(token) in (None, tokenizer.unk_token_id):
                raise ValueError(f"The tokenizer lacks the placeholder {token!r}; build with ILMProcessor.from_components.")
        self._index = {kind: {} for kind in ("item", "user")}
        for kind in ("item", "user"):
            for row, entry in enumerate(self.catalog.get(f"{kind}s", [])):
                key = entry[f"{kind}_id"]
                if not isinstance(key, str):
                    raise TypeError(f"Catalog {kind}_id {key!r} must be a string.")
                if key in self._index[kind]:
                    raise ValueError(f"Catalog has {kind}_id {key!r} twice.")
                self._index[kind][key] = row
        self._titles = {}
        for entry in self.catalog.get("items", []):
            self._titles.setdefault(normalize_title(entry.get("title", "")), entry["item_id"])

    @classmethod
    def from_components(cls, tokenizer_name_or_path, catalog=None, num_query_tokens=8, tokenizer_kwargs=None, **kwargs):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_name_or_path, **(tokenizer_kwargs or {}))
        item_token, user_token = kwargs.get("item_token", "<item>"), kwargs.get("user_token", "<user>")
        tokenizer.add_special_tokens({"additional_special_tokens": [item_token, user_token]})
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return cls(tokenizer, catalog=catalog, num_query_tokens=num_query_tokens, **kwargs)

    # --- ids ---------------------------------------------------------------------------------------

    @property
    def item_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.item_token)

    @property
    def user_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.user_token)

    def rows(self, ids, kind: str = "item") -> list[int]:
        """External ids -> CF-table rows, with clear errors for unknown ids and wrong types."""
        if isinstance(ids, (str, int)) or not hasattr(ids, "__iter__"):
            raise TypeError(f"{kind}_ids must be a list of ids per example, got {type(ids).__name__}: {ids!r}.")
        rows = []
        for key in ids:
            if isinstance(key, bool) or not isinstance(key, (str, int)) and not hasattr(key, "__index__"):
                raise TypeError(f"{kind} id {key!r} has type {type(key).__name__}; ids are strings (or ints).")
            key = str(int(key)) if not isinstance(key, str) else key
            if key not in self._index[kind]:
                known = list(self._index[kind])[:3]
                raise KeyError(
                    f"{kind} id {key!r} is not in the catalog ({len(self._index[kind])} {kind}s, e.g. {known}). "
                    f"Encode unknown {kind}s from raw CF vectors with `{kind}_embeds=`."
                )
            rows.append(self._index[kind][key])
        return rows

    def item(self, item_id: str) -> dict:
        return self.catalog["items"][self.rows([item_id])[0]]

    # --- encoding ----------------------------------------------------------------------------------

    def __call__(
        self,
        text=None,
        messages=None,
        item_ids=None,
        user_ids=None,
        add_generation_prompt: bool = True,
        return_labels: bool = False,
        padding_side: str = "left",
        return_tensors: str = "pt",
        **tokenizer_kwargs,
    ) -> BatchFeature:
        """Tokenizes one example or a batch.

        `text`: a prompt string (or list of them). `messages`: a chat (list of `{"role", "content"}`)
        or a list of chats; the LLM's chat template is applied. `item_ids` / `user_ids`: the ids
        each example's placeholders refer to, in order (a list, or a list of lists for a batch).
        `return_labels`: labels on assistant turns only (chat input), -100 elsewhere.
        """
        if (text is None) == (messages is None):
            raise ValueError("Pass exactly one of `text` or `messages`.")
        batched = isinstance(text, (list, tuple)) if text is not None else bool(messages) and isinstance(messages[0], (list, tuple))
        examples = (list(text) if batched else [text]) if text is not None else (list(messages) if batched else [messages])
        entity_ids = {}
        for kind, ids in (("item", item_ids), ("user", user_ids)):
            if ids is None:
                ids = [[] for _ in examples]
            elif not batched:
                ids = [ids]
            if len(ids) != len(examples):
                raise ValueError(f"Got {len(examples)} examples but {len(ids)} lists of {kind}_ids.")
            entity_ids[kind] = [self.rows(row, kind) for row in ids]

        prompts, spans = [], []
        for example in examples:
            if text is not None:
                if not isinstance(example, str):
                    raise TypeError(f"`text` must be a string or a list of strings, got {type(example).__name__}.")
                prompts.append(self._expand(example))
                spans.append([])
            else:
                prompt, example_spans = self._render_chat(example, add_generation_prompt, return_labels)
                prompts.append(prompt)
                spans.append(example_spans)
        for i, prompt in enumerate(prompts):
            for kind, token in (("item", self.item_token), ("user", self.user_token)):
                found = prompt.count(token) // self.num_query_tokens
                if found != len(entity_ids[kind][i]):
                    raise ValueError(
                        f"Example {i} has {found} {token} placeholders but {len(entity_ids[kind][i])} {kind}_ids."
                    )

        self.tokenizer.padding_side = padding_side
        encoding = self.tokenizer(
            prompts,
            padding=True,
            add_special_tokens=False,
            return_offsets_mapping=return_labels,
            return_tensors=return_tensors,
            **tokenizer_kwargs,
        )
        data = {"input_ids": encoding["input_ids"], "attention_mask": encoding["attention_mask"]}
        for kind in ("item", "user"):
            width = max([len(row) for row in entity_ids[kind]] + [0])
            if width:
                data[f"{kind}_ids"] = torch.tensor([row + [-1] * (width - len(row)) for row in entity_ids[kind]])
        if return_labels:
            data["labels"] = self._labels(encoding, spans)
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _expand(self, prompt: str) -> str:
        for token in (self.item_token, self.user_token):
            prompt = prompt.replace(token, token * self.num_query_tokens)
        return prompt

    def _render_chat(self, messages, add_generation_prompt, return_labels):
        """Applies the chat template; with labels, also the character spans of assistant turns."""
        for message in messages:
            if not isinstance(message, dict) or not {"role", "content"} <= set(message):
                raise ValueError(f"Each message must be a dict with 'role' and 'content', got {message!r}.")

        def render(chat, generation_prompt):
            return self._expand(self.tokenizer.apply_chat_template(
                chat, tokenize=False, add_generation_prompt=generation_prompt, chat_template=self.chat_template
            ))

        if not return_labels:
            return render(messages, add_generation_prompt), []
        full = render(messages, False)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            start, end = len(render(messages[:i], True)), len(render(messages[: i + 1], False))
            if not full.startswith(render(messages[: i + 1], False)):
                raise ValueError("The chat template does not render turns as prefixes; labels cannot be placed.")
            spans.append((start, end))
        if not spans:
            raise ValueError("return_labels needs at least one assistant message to learn from.")
        return full, spans

    def _labels(self, encoding, spans):
        labels = torch.full_like(encoding["input_ids"], -100)
        for row, (offsets, example_spans) in enumerate(zip(encoding["offset_mapping"], spans)):
            for col, (start, end) in enumerate(offsets.tolist()):
                if end > start and any(s <= start < e for s, e in example_spans):
                    labels[row, col] = encoding["input_ids"][row, col]
        return labels

    # --- decoding ----------------------------------------------------------------------------------

    def batch_decode(self, sequences, skip_special_tokens=True, **kwargs):
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kwargs)

    def decode(self, sequence, skip_special_tokens=True, **kwargs):
        return self.tokenizer.decode(sequence, skip_special_tokens=skip_special_tokens, **kwargs)

    def match_item(self, text: str, candidates=None, cutoff: float = 0.9) -> str | None:
        """Maps a generated title to a catalog item id (exact after normalisation, else the closest
        title at or above `cutoff` similarity), optionally only among `candidates`; None if none."""
        wanted = normalize_title(text)
        if candidates is None:
            titles = self._titles
        else:
            titles = {normalize_title(self.item(c).get("title", "")): str(c) for c in candidates}
        if wanted in titles:
            return titles[wanted]
        close = difflib.get_close_matches(wanted, list(titles), n=1, cutoff=cutoff)
        return titles[close[0]] if close else None

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "item_ids", "user_ids"]


__all__ = ["ILMProcessor", "normalize_title"]
