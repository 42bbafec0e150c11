"""Decoding constrained to catalog (or candidate) titles with a prefix trie, as OpenP5 does.

Why: a free-running LLM may answer with a title that is misspelt, half-remembered or simply not in
the catalog, and then `match_item` has to guess. Constraining each step to the tokens that continue
some allowed title means every greedy / beam / sampled answer is exactly one real item's title
followed by the end-of-turn token, so it maps back to an item id without fuzzy matching. With the
whole catalog allowed, full-catalog recommendation becomes a beam search over the trie: the top
`num_beams` beams are the model's top-ranked items, scored by their sequence likelihood.

Usage::

    batch = processor(messages=chats, item_ids=item_ids)
    out = model.generate(**batch, num_beams=10, num_return_sequences=10, max_new_tokens=64,
                         logits_processor=title_constraint(processor, batch["input_ids"]))

Titles are tokenized alone (`add_special_tokens=False`), which is how the chat template tokenizes an
assistant turn that contains only the title; each ends with the end-of-turn token (`<|im_end|>`
for ChatML). Identical titles share one path in the trie.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList

END_OF_TURN = "<|im_end|>"
# Weight of the ranking head's scores in head-guided decoding, against the LLM's token scores: at 100
# the answer spells out the head's choice and the LLM only breaks near-ties (chosen on the validation
# split: 1 -> HR@1 0.265, 10 -> 0.380, 100 -> 0.410, the head's own; benchmarks/quality.md)
GUIDE_WEIGHT = 100.0


class TitleTrie:
    """A prefix trie over the token ids of `titles`, each followed by `eos_token_id`.

    Args:
        tokenizer: the LLM's tokenizer; titles are tokenized with `add_special_tokens=False`.
        titles: the allowed answers (duplicates are fine: they share one path).
        eos_token_id: the end-of-turn token that closes each answer.
        pad_token_id: also allowed once an answer is complete (defaults to the tokenizer's pad id),
            so a finished row of a batch can keep being padded.

    The trie is immutable once built, so it is shared (not copied) by `copy.deepcopy`.
    """

    def __init__(self, tokenizer, titles: Iterable[str], eos_token_id: int, pad_token_id: int | None = None):
        self.eos_token_id = int(eos_token_id)
        pad = getattr(tokenizer, "pad_token_id", None) if pad_token_id is None else pad_token_id
        self.pad_token_id = None if pad is None else int(pad)
        self.done = list(dict.fromkeys([self.eos_token_id] + ([self.pad_token_id] if self.pad_token_id is not None else [])))
        self.root: dict = {}
        self._finished: dict = {}  # sentinel node reached through eos; every prefix past it is "done"
        self.sequences: list[list[int]] = []
        self._reach: dict = {}  # id(node) -> indices of the titles whose path passes through it
        self._ends: dict = {}  # id(node) -> indices of the titles complete at it
        titles = list(titles)
        encoded = tokenizer(titles, add_special_tokens=False)["input_ids"] if titles else []
        for ids in encoded:
            ids = [int(t) for t in ids]
            if self.eos_token_id in ids:
                raise ValueError(f"A title tokenizes to the end-of-turn token {self.eos_token_id}: {ids}.")
            index = len(self.sequences)
            self.sequences.append(ids + [self.eos_token_id])
            node = self.root
            for token in ids:
                node = node.setdefault(token, {})
                self._reach.setdefault(id(node), []).append(index)
            node[self.eos_token_id] = self._finished
            self._ends.setdefault(id(node), []).append(index)
        self._tensors: dict = {}  # (id(node), device) -> LongTensor of allowed ids

    def __len__(self) -> int:
        return len(self.sequences)

    def __deepcopy__(self, memo):
        return self  # immutable: processors deep-copy their __dict__ in to_dict()

    def _node(self, prefix_ids) -> dict | None:
        """The node reached by `prefix_ids`; `_finished` once eos was passed; None if off the trie."""
        node = self.root
        for token in prefix_ids:
            if node is self._finished:
                return node
            node = node.get(int(token))
            if node is None:
                return None
        return node

    def allowed(self, prefix_ids: Sequence[int] | torch.Tensor) -> list[int]:
        """Next tokens allowed after the generated `prefix_ids`.

        Inside a title: the tokens that continue some title (and eos where a title is complete).
        After title + eos: only eos / pad. Off the trie (cannot happen under the constraint, except
        for beams already at -inf): eos / pad too, so the row closes.
        """
        if isinstance(prefix_ids, torch.Tensor):
            prefix_ids = prefix_ids.tolist()
        node = self._node(prefix_ids)
        if node is None or node is self._finished:
            return list(self.done)
        return list(node)

    def best_continuation(self, prefix_ids, title_scores: torch.Tensor) -> dict[int, float]:
        """For each allowed next token, the best score (`title_scores`, one per title in build order)
        among the titles still reachable through it; 0.0 once the answer is complete."""
        node = self._node(prefix_ids.tolist() if isinstance(prefix_ids, torch.Tensor) else prefix_ids)
        if node is None or node is self._finished:
            return dict.fromkeys(self.done, 0.0)
        best = {}
        for token, child in node.items():
            titles = self._ends[id(node)] if child is self._finished else self._reach[id(child)]
            best[token] = float(title_scores[titles].max())
        return best

    def allowed_tensor(self, prefix_ids, device) -> torch.Tensor:
        """`allowed` as a cached LongTensor on `device`."""
        if isinstance(prefix_ids, torch.Tensor):
            prefix_ids = prefix_ids.tolist()
        node = self._node(prefix_ids)
        if node is None:
            node = self._finished
        key = (id(node), str(device))
        tensor = self._tensors.get(key)
        if tensor is None:
            ids = self.done if node is self._finished else list(node)
            tensor = self._tensors[key] = torch.tensor(ids, dtype=torch.long, device=device)
        return tensor


class TitleConstrainedLogitsProcessor(LogitsProcessor):
    """Masks scores to -inf outside the tokens that continue an allowed title.

    Args:
        tries: one `TitleTrie` shared by all rows, or a list with one per example of the batch.
        prompt_length: `input_ids.shape[1]` of the (left-padded) prompt batch; tokens after it are
            the generated answer.
        title_scores: optional, a score per title of each example's trie (a 1-D tensor per trie, in
            the order its titles were given), e.g. the ranking head's logits for the candidates.
            Each allowed token then gains `score_weight` x the best score among the titles it
            still leads to, so the answer spells out the best-scored title unless the LLM's own
            preference (the model's scores) outweighs the difference: the conversational answer
            names the item the ranking head ranks first.

    With beam search or `num_return_sequences`, `generate` repeats each example's row `n` times
    consecutively (row `b * n + k` belongs to example `b`); `n` is read off the row count.
    """

    def __init__(self, tries: TitleTrie | Sequence[TitleTrie], prompt_length: int, title_scores=None, score_weight: float = 1.0):
        self.shared = isinstance(tries, TitleTrie)
        self.tries = [tries] if self.shared else list(tries)
        if not self.tries or not all(isinstance(t, TitleTrie) for t in self.tries):
            raise TypeError("`tries` must be a TitleTrie or a non-empty list of them.")
        self.prompt_length = int(prompt_length)
        self.title_scores, self.score_weight = None, float(score_weight)
        if title_scores is not None:
            self.title_scores = [torch.as_tensor(row, dtype=torch.float32).cpu() for row in title_scores]
            if len(self.title_scores) != len(self.tries):
                raise ValueError(f"Got title_scores for {len(self.title_scores)} examples but {len(self.tries)} tries.")
            for row, trie in zip(self.title_scores, self.tries):
                if row.shape != (len(trie),):
                    raise ValueError(f"title_scores rows need one score per title ({len(trie)}), got shape {tuple(row.shape)}.")

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows = input_ids.shape[0]
        if self.shared:
            trie_of = lambda row: self.tries[0]  # noqa: E731
        else:
            if rows % len(self.tries):
                raise ValueError(f"{rows} rows cannot be split over {len(self.tries)} examples' tries.")
            per = rows // len(self.tries)
            trie_of = lambda row: self.tries[row // per]  # noqa: E731
        generated = input_ids[:, self.prompt_length:].tolist()
        cols = [trie_of(row).allowed_tensor(generated[row], scores.device) for row in range(rows)]
        row_index = torch.repeat_interleave(
            torch.arange(rows, device=scores.device), torch.tensor([len(c) for c in cols], device=scores.device)
        )
        blocked = torch.ones_like(scores, dtype=torch.bool)
        blocked[row_index, torch.cat(cols)] = False
        scores = scores.masked_fill(blocked, -float("inf"))
        if self.title_scores is not None:
            per = rows // len(self.tries)
            bonus = torch.zeros_like(scores)
            for row in range(rows):
                best = trie_of(row).best_continuation(generated[row], self.title_scores[row // per])
                bonus[row, list(best)] = torch.tensor(list(best.values()), dtype=scores.dtype, device=scores.device)
            scores = scores + self.score_weight * bonus
        return scores


def end_of_turn_id(tokenizer) -> int:
    """`<|im_end|>` where the vocabulary has it, else the tokenizer's eos."""
    # the id maps back to the token exactly when the vocabulary has it (a missing one maps to unk);
    # asked so rather than through get_vocab(), which a fast tokenizer rebuilds on every call (~30 ms)
    token_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if token_id is not None and tokenizer.convert_ids_to_tokens(token_id) == END_OF_TURN:
        return token_id
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has neither <|im_end|> nor an eos token to close answers with.")
    return tokenizer.eos_token_id


def catalog_trie(processor) -> TitleTrie:
    """The whole catalog's trie, built once per processor (and end-of-turn token) and cached on it."""
    eos = end_of_turn_id(processor.tokenizer)
    cache = processor.__dict__.setdefault("_title_tries", {})
    if eos not in cache:
        titles = [entry.get("title", "") for entry in processor.catalog.get("items", [])]
        cache[eos] = TitleTrie(processor.tokenizer, titles, eos)
    return cache[eos]


def title_constraint(processor, input_ids: torch.Tensor, candidates=None, scores=None, score_weight: float = 1.0) -> LogitsProcessorList:
    """A `LogitsProcessorList` for `model.generate(..., logits_processor=...)` that only lets the
    model answer with a title.

    Args:
        processor: an `ILMProcessor` (tokenizer + catalog).
        input_ids: the prompt batch passed to `generate` (left-padded); sets the prompt length.
        candidates: None for the whole catalog (one shared, cached trie); a list per batch row of
            item ids (that row's answer is one of their titles); or one flat list of item ids shared
            by every row.
        scores: optional, one score per candidate (per catalog item with `candidates=None`) for each
            batch row, e.g. `model.score_items(...)` from the ranking head: decoding then follows
            the best-scored title (see `TitleConstrainedLogitsProcessor`).
        score_weight: how much those scores count against the LLM's own token scores.
    """
    if candidates is None:
        tries = catalog_trie(processor)
    else:
        eos = end_of_turn_id(processor.tokenizer)
        title = lambda item_id: processor.item(item_id).get("title", "")  # noqa: E731
        candidates = list(candidates)
        if candidates and all(isinstance(c, (str, int)) for c in candidates):
            tries = TitleTrie(processor.tokenizer, [title(c) for c in candidates], eos)
        else:
            if len(candidates) != input_ids.shape[0]:
                raise ValueError(f"Got {len(candidates)} candidate lists for {input_ids.shape[0]} rows.")
            if any(len(row) == 0 for row in candidates):
                raise ValueError("Every row needs at least one candidate.")
            tries = [TitleTrie(processor.tokenizer, [title(c) for c in row], eos) for row in candidates]
    if scores is not None and isinstance(tries, TitleTrie):  # one shared trie: one trie per row, shared
        tries = [tries] * input_ids.shape[0]
    return LogitsProcessorList([TitleConstrainedLogitsProcessor(tries, input_ids.shape[1], scores, score_weight)])


__all__ = ["TitleTrie", "TitleConstrainedLogitsProcessor", "title_constraint", "catalog_trie", "end_of_turn_id"]
