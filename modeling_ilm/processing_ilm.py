"""Processor for ILM: the LLM's tokenizer plus the item catalog.

Prompts are text or chat `messages` with `<item>` / `<user>` placeholders, one per entity, and
the ids they refer to. Each placeholder is expanded to `num_query_tokens` copies (the model
scatters that many item tokens there), and ids become rows of the model's CF tables.

Items are rendered as tokens only (`item_rendering="tokens"`, the paper's rendering) or, as in
LLaRA, as their catalog title followed by their tokens (`item_rendering="title+tokens"`).
"""

import difflib
import functools
import re
import unicodedata

from transformers import AutoTokenizer
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, TextKwargs, Unpack

from .configuration_ilm import ITEM_TOKEN, USER_TOKEN


def normalize_title(text: str) -> str:
    """Lower-case, accents and punctuation dropped, whitespace collapsed: for matching titles.
    Letters of any script stay (七人の侍 is not the empty string)."""
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return " ".join(re.sub(r"[\W_]+", " ", text.lower()).split())


class ILMProcessorKwargs(ProcessingKwargs, total=False):
    """`ILMProcessor.__call__`'s typed keyword arguments (transformers' `ProcessingKwargs` convention):
    the ILM's own below, and the tokenizer's (`TextKwargs`: truncation, max_length, padding_side,
    return_tensors, ...) flat or as `text_kwargs={...}`."""

    add_generation_prompt: bool
    return_labels: bool
    item_rendering: str | None


# Tokenizer options that the processor sets itself; any other one changes how text is tokenized.
TEXT_DEFAULTS = {"padding": True, "padding_side": "left", "return_tensors": "pt"}
ITEM_RENDERINGS = ("tokens", "title+tokens")
# A literal inside a rendered prompt: text the user supplied that must be tokenized as plain text, never
# as a placeholder or a control token. Private-use code points, which no chat template emits.
LITERAL = re.compile("\ue000(\\d+)\ue001")


@functools.lru_cache(maxsize=8)
def _literal_pattern(placeholders: tuple, specials: tuple) -> re.Pattern:
    """Escaped placeholders (`\\<item>`) and, when given, the tokenizer's special strings."""
    escaped = "|".join(re.escape(p) for p in placeholders)
    special = "|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True))
    return re.compile(rf"\\({escaped})" + (f"|({special})" if special else ""))


def _check_item_rendering(value) -> str:
    if value not in ITEM_RENDERINGS:
        allowed = ", ".join(repr(v) for v in ITEM_RENDERINGS)
        raise ValueError(f"item_rendering must be one of {allowed}, got {value!r}.")
    return value


class ILMProcessor(ProcessorMixin):
    r"""
    Args:
        tokenizer: the frozen LLM's tokenizer, with the placeholder tokens added as special tokens.
        catalog (`dict`): `{"items": [{"item_id": str, "title": str, ...}, ...], "users": [{"user_id": str, ...}]}`.
            List order is the row order of the model's CF tables.
        num_query_tokens (`int`): tokens per item/user (the model config's `num_query_tokens`).
        item_token / user_token (`str`): the placeholders.
        chat_template (`str`, *optional*): overrides the tokenizer's chat template.
        item_rendering (`str`, *optional*, defaults to `"tokens"`): how each `<item>` whose id is given is shown
            to the LLM. `"tokens"`: the item's `num_query_tokens` item tokens only (the paper's rendering).
            `"title+tokens"`: its catalog title, a space, then its item tokens (hybrid rendering, as in LLaRA),
            e.g. `"liked <item> ."` with `item_ids=["3"]` and `num_query_tokens=2` becomes
            `"liked Heat (1995) <item><item> ."`. Saved with the processor; `__call__(..., item_rendering=...)`
            overrides it for one call.
    """

    tokenizer_class = "AutoTokenizer"
    valid_processor_kwargs = ILMProcessorKwargs
    text_kwargs = TEXT_DEFAULTS  # the lowest-priority defaults of `_merge_kwargs`

    def __init__(
        self,
        tokenizer=None,
        catalog=None,
        num_query_tokens=8,
        item_token=ITEM_TOKEN,
        user_token=USER_TOKEN,
        chat_template=None,
        item_rendering="tokens",
    ):
        self.item_rendering = _check_item_rendering(item_rendering)
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
    def from_components(
        cls, tokenizer_name_or_path, catalog=None, num_query_tokens=8, tokenizer_kwargs=None, item_rendering="tokens", **kwargs
    ):
        """A processor for a fresh ILM: the LLM's tokenizer (Hub id or path; `tokenizer_kwargs` go to
        `AutoTokenizer.from_pretrained`) with the placeholder tokens added, and the `catalog`
        (`{"items": [{"item_id", "title", ...}], "users": [{"user_id"}]}`, rows in CF-table order).
        Other arguments as in the class docstring."""
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_name_or_path, **(tokenizer_kwargs or {}))
        item_token, user_token = kwargs.get("item_token", ITEM_TOKEN), kwargs.get("user_token", USER_TOKEN)
        tokenizer.add_special_tokens({"additional_special_tokens": [item_token, user_token]})
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return cls(tokenizer, catalog=catalog, num_query_tokens=num_query_tokens, item_rendering=item_rendering, **kwargs)

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
        """The catalog entry of `item_id` (`{"item_id", "title", ...}`); KeyError naming it if unknown."""
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
        item_rendering: str | None = None,
        **kwargs: Unpack[ILMProcessorKwargs],
    ) -> BatchFeature:
        """Tokenizes one example or a batch.

        `text`: a prompt string (or list of them). `messages`: a chat (list of `{"role", "content"}`)
        or a list of chats; the LLM's chat template is applied. `item_ids` / `user_ids`: the ids
        each example's placeholders refer to, in order (a list, or a list of lists for a batch).
        `return_labels`: labels on assistant turns only (chat input), -100 elsewhere.
        `item_rendering`: `"tokens"` or `"title+tokens"` for this call; None uses the processor's setting.
        Tokenizer options (`ILMProcessorKwargs`' text kwargs) come flat or as `text_kwargs={...}`:
        `padding_side` ("left", for generation), `return_tensors` ("pt", "np" or None for lists),
        `truncation` / `max_length` and the like; an unknown option is an error naming it.

        Returns a `BatchFeature` with `input_ids` and `attention_mask` `(batch_size, length)`,
        `item_ids` / `user_ids` `(batch_size, max_entities)` (CF-table rows, -1 pads) where the
        prompts hold placeholders, and with `return_labels` `labels` `(batch_size, length)`.
        """
        media = [key for key in ("images", "videos", "audio") if kwargs.pop(key, None) is not None]  # apply_chat_template passes None
        if media:
            raise TypeError(f"ILMProcessor takes text and items only, not {media}.")
        unknown = sorted(set(kwargs) - set(TextKwargs.__annotations__) - {"text_kwargs", "common_kwargs"})
        if unknown:
            raise TypeError(f"ILMProcessor got unknown keyword arguments {unknown}; tokenizer options are {sorted(TextKwargs.__annotations__)}.")
        text_kwargs = self._merge_kwargs(ILMProcessorKwargs, **kwargs)["text_kwargs"]
        padding_side, return_tensors, padding = (text_kwargs.pop(key) for key in ("padding_side", "return_tensors", "padding"))
        # the options the caller set beyond the processor's own (left padding to the longest prompt)
        options = sorted(text_kwargs) + ([] if padding is True else ["padding"])
        item_rendering = _check_item_rendering(self.item_rendering if item_rendering is None else item_rendering)
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

        prompts, spans, literals = [], [], []
        for i, example in enumerate(examples):
            literals.append([])
            titled = None
            if item_rendering == "title+tokens":
                titled = functools.partial(self._insert_titles, rows=entity_ids["item"][i], example=i)
            if text is not None:
                if not isinstance(example, str):
                    raise TypeError(f"`text` must be a string or a list of strings, got {type(example).__name__}.")
                example = self._protect(example, literals[i], control_tokens=False)  # a raw prompt may hold its own template
                prompts.append(self._expand(titled(example) if titled else example))
                spans.append([])
            else:
                prompt, example_spans = self._render_chat(example, add_generation_prompt, return_labels, titled, literals[i])
                prompts.append(prompt)
                spans.append(example_spans)
        for i, prompt in enumerate(prompts):
            for kind, token in (("item", self.item_token), ("user", self.user_token)):
                found = prompt.count(token) // self.num_query_tokens
                if found != len(entity_ids[kind][i]):
                    raise ValueError(
                        f"Example {i} has {found} {token} placeholders but {len(entity_ids[kind][i])} {kind}_ids."
                    )

        if any(literals):
            if options:
                raise ValueError(f"Tokenizer options {options} cannot be combined with literal text (escaped placeholders or control tokens in the input).")
            encoding = self._tokenize_with_literals(prompts, literals, padding_side)
        else:
            encoding = self.tokenizer(  # lists: every output becomes `return_tensors` at the end, alike
                prompts,
                padding=padding,
                padding_side=padding_side,  # for this call only: the tokenizer keeps its own setting
                add_special_tokens=False,
                return_offsets_mapping=return_labels,
                **text_kwargs,
            )
        data = {"input_ids": encoding["input_ids"], "attention_mask": encoding["attention_mask"]}
        for i, ids in enumerate(data["input_ids"]):  # e.g. truncation=True may cut a placeholder run
            for kind, token_id in (("item", self.item_token_id), ("user", self.user_token_id)):
                expected = len(entity_ids[kind][i]) * self.num_query_tokens
                if ids.count(token_id) != expected:
                    raise ValueError(
                        f"Example {i} tokenizes to {ids.count(token_id)} {kind} tokens where its {len(entity_ids[kind][i])} "
                        f"{kind}_ids need {expected}: truncation (max_length) cut into them. Raise max_length or shorten the prompt."
                    )
        for kind in ("item", "user"):
            width = max([len(row) for row in entity_ids[kind]] + [0])
            if width:
                data[f"{kind}_ids"] = [row + [-1] * (width - len(row)) for row in entity_ids[kind]]
        if return_labels:
            data["labels"] = self._labels(encoding, spans)
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _protect(self, text: str, literals: list, control_tokens: bool = True) -> str:
        """`text` with each escaped placeholder (`\\<item>` -> the literal text "<item>") and, with
        `control_tokens`, each of the tokenizer's special strings (e.g. `<|im_end|>`) swapped for a
        LITERAL marker; `literals` collects what each marker stands for."""
        if not isinstance(text, str):
            return text
        specials = tuple(t for t in self._special_strings() if t not in (self.item_token, self.user_token)) if control_tokens else ()
        pattern = _literal_pattern((self.item_token, self.user_token), specials)

        def mark(match):
            literals.append(match.group(1) or match.group(2))
            return f"\ue000{len(literals) - 1}\ue001"

        return pattern.sub(mark, text)

    def _special_strings(self) -> list[str]:
        """Every string the tokenizer reads as one special token (control tokens, placeholders).
        Read once per vocabulary size: every message of every call asks (the phase-2 collator's path)."""
        if getattr(self, "_specials", (None,))[0] != len(self.tokenizer):
            added = [token.content for token in self.tokenizer.added_tokens_decoder.values() if token.special]
            self._specials = (len(self.tokenizer), sorted(set(added) | set(self.tokenizer.all_special_tokens)))
        return self._specials[1]

    def _tokenize_with_literals(self, prompts, literals, padding_side):
        """Tokenizes prompts that hold LITERAL markers: the text between markers as usual, each
        literal with `split_special_tokens` (plain text). Offsets point into the marked prompt (a
        literal's tokens all get its marker's span), as the label spans do."""
        rows = {"input_ids": [], "attention_mask": [], "offset_mapping": []}
        for prompt, example_literals in zip(prompts, literals):
            ids, offsets, position = [], [], 0
            pieces = LITERAL.split(prompt)  # text, literal index, text, ...
            for k, piece in enumerate(pieces):
                if k % 2:  # a literal: its marker spans [position, position + marker length)
                    length = len(f"\ue000{piece}\ue001")
                    literal = self.tokenizer(example_literals[int(piece)], add_special_tokens=False, split_special_tokens=True)["input_ids"]
                    ids += literal
                    offsets += [(position, position + length)] * len(literal)
                    position += length
                elif piece:
                    encoded = self.tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)
                    ids += encoded["input_ids"]
                    offsets += [(position + a, position + b) for a, b in encoded["offset_mapping"]]
                    position += len(piece)
            rows["input_ids"].append(ids)
            rows["offset_mapping"].append(offsets)
        width = max(len(ids) for ids in rows["input_ids"])
        for i, ids in enumerate(rows["input_ids"]):
            pad = width - len(ids)
            fill = lambda row, value: [value] * pad + row if padding_side == "left" else row + [value] * pad  # noqa: E731
            rows["input_ids"][i] = fill(ids, self.tokenizer.pad_token_id)
            rows["attention_mask"].append(fill([1] * len(ids), 0))
            rows["offset_mapping"][i] = fill(rows["offset_mapping"][i], (0, 0))
        return rows

    def _expand(self, prompt: str) -> str:
        for token in (self.item_token, self.user_token):
            prompt = prompt.replace(token, token * self.num_query_tokens)
        return prompt

    def _insert_titles(self, prompt: str, rows: list[int], example: int) -> str:
        """Puts each item's title and a space before its placeholder, the k-th placeholder taking the
        k-th row. A prompt may hold fewer placeholders than rows (a chat prefix); never more."""
        pieces = prompt.split(self.item_token)
        if len(pieces) - 1 > len(rows):
            raise ValueError(f"Example {example} has {len(pieces) - 1} {self.item_token} placeholders but {len(rows)} item_ids.")
        out = [pieces[0]]
        for row, piece in zip(rows, pieces[1:]):
            entry = self.catalog["items"][row]
            title = entry.get("title")
            if not isinstance(title, str) or not title.strip():
                raise ValueError(
                    f"Item {entry.get('item_id')!r} has no title in the catalog; item_rendering='title+tokens' needs one."
                )
            for token in self._special_strings():
                if token in title:
                    raise ValueError(
                        f"The title of item {entry.get('item_id')!r} ({title!r}) contains the placeholder or control token "
                        f"{token!r}; with item_rendering='title+tokens' it would be read as one. Fix the catalog's title."
                    )
            out.append(f"{title} {self.item_token}{piece}")
        return "".join(out)

    def apply_chat_template(self, conversation, chat_template=None, item_ids=None, user_ids=None, processor_kwargs=None, **kwargs):
        """`ProcessorMixin.apply_chat_template`, taking the ids of the conversation's placeholders as
        `item_ids` / `user_ids` (as `__call__` does) for `tokenize=True`. `processor(messages=...)` is
        the shorter way to the same tokens."""
        ids = {key: value for key, value in (("item_ids", item_ids), ("user_ids", user_ids)) if value is not None}
        return super().apply_chat_template(conversation, chat_template, processor_kwargs={**(processor_kwargs or {}), **ids}, **kwargs)

    def _render_chat(self, messages, add_generation_prompt, return_labels, titled, literals):
        """Applies the chat template (then `titled`, which inserts item titles, if given); with labels,
        also the character spans of assistant turns. Message contents are protected first (`_protect`)."""
        for message in messages:
            if not isinstance(message, dict) or not {"role", "content"} <= set(message):
                raise ValueError(f"Each message must be a dict with 'role' and 'content', got {message!r}.")
        messages = [{**message, "content": self._protect(message["content"], literals)} for message in messages]

        def render(chat, generation_prompt):
            prompt = self.tokenizer.apply_chat_template(
                chat, tokenize=False, add_generation_prompt=generation_prompt, chat_template=self.chat_template
            )
            return self._expand(titled(prompt) if titled else prompt)

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
        """The tokens whose characters lie in an assistant turn's span; -100 elsewhere (and on padding)."""
        return [
            [token if end > start and any(s <= start < e for s, e in example_spans) else -100 for token, (start, end) in zip(ids, offsets)]
            for ids, offsets, example_spans in zip(encoding["input_ids"], encoding["offset_mapping"], spans)
        ]

    # --- decoding ----------------------------------------------------------------------------------

    def batch_decode(self, sequences, skip_special_tokens=True, **kwargs):
        """The tokenizer's `batch_decode` of `(batch_size, length)` ids, special tokens skipped by default."""
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kwargs)

    def decode(self, sequence, skip_special_tokens=True, **kwargs):
        """The tokenizer's `decode` of one `(length,)` sequence, special tokens skipped by default."""
        return self.tokenizer.decode(sequence, skip_special_tokens=skip_special_tokens, **kwargs)

    def title_constraint(self, input_ids, candidates=None, scores=None, score_weight=1.0):
        """A `logits_processor` for `model.generate` that lets answers be only catalog titles
        (`candidates=None`) or, per row, the titles of that row's candidate item ids, each followed
        by the end-of-turn token: every answer then names a real item. With `scores` (one per
        candidate per row, e.g. `model.score_items(...)`), the answer follows the best-scored title
        (see `constrained_decoding`)."""
        from .constrained_decoding import title_constraint

        return title_constraint(self, input_ids, candidates, scores, score_weight)

    def match_item(self, text: str, candidates=None, cutoff: float = 0.9) -> str | None:
        """Maps a generated title to a catalog item id (exact after normalisation, else the closest
        title at or above `cutoff` similarity), optionally only among `candidates`; None if none."""
        wanted = normalize_title(text)
        if not wanted:  # nothing but punctuation names no item
            return None
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
