"""ChatModel: what the harness asks of a model. Score answers by likelihood, generate greedily, map
answers to items. One class serves the ILM (placeholders become precomputed item/user tokens) and
the text-only baseline (its frozen LLM reading titles instead)."""

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import DynamicCache, GenerationConfig

from modeling_ilm.constrained_decoding import GUIDE_WEIGHT, catalog_trie
from modeling_ilm.processing_ilm import normalize_title

from .prompts import Prompt, as_text


def content_free_prompt(noun: str) -> Prompt:
    """A user turn that names no item or user ("Recommend a movie."), in the model's chat template:
    the prior of each title that calibrated ranking subtracts. Without entity tokens it reads the
    same for the ILM as for its frozen LLM."""
    article = "an" if noun[:1].lower() in "aeiou" else "a"
    return Prompt([{"role": "user", "content": f"Recommend {article} {noun}."}], [], [])


@dataclass
class Prefill:
    """A batch of encoded prompts after one forward: `inputs` (left-padded, as `ChatModel.encode`
    gives), the KV cache of the whole prompts and the logits of their last position. Positions count
    attended tokens only (as `generate` numbers a left-padded row), so a row's cache without its
    left padding is the cache of that prompt run alone."""

    inputs: dict
    cache: DynamicCache
    last_logits: torch.Tensor

    def generation_cache(self) -> DynamicCache:
        """A copy of the cache without the prompts' last token, which `generate` then runs (it needs
        one token it has not seen)."""
        cache = copy.deepcopy(self.cache)
        cache.crop(-1)
        return cache

    def select(self, rows) -> "Prefill":
        """The prefill of some rows of the batch (their cache copied)."""
        rows = torch.as_tensor(rows, device=self.last_logits.device)
        cache = DynamicCache([(layer.keys[rows], layer.values[rows]) for layer in self.cache.layers])
        return Prefill({k: v[rows] for k, v in self.inputs.items()}, cache, self.last_logits[rows])


@dataclass
class ScoredAnswers:
    """One prompt's answers as `ChatModel.score_rows` scored them, token by token: each answer's
    token ids (`answer_ids`, end-of-turn token included), the log-likelihood of each token given the
    prompt and the answer's earlier tokens, and the model's most likely token at each of those
    positions. Answers that share their first k tokens share the context of their next one, so
    together these hold what greedy decoding would choose at every node of the answers' prefix trie
    (`follow_answers`)."""

    ids: list
    token_logp: list  # per answer, float64 (len(answer),)
    top_token: list  # per answer, int64 (len(answer),)

    @property
    def sums(self) -> np.ndarray:
        return np.array([logp.sum() for logp in self.token_logp], dtype=float)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(ids) for ids in self.ids], dtype=np.int64)


def follow_answers(scored: ScoredAnswers, stop_ids, max_new_tokens: int, constrained=False, answer_scores=None, weight=1.0) -> list | None:
    """The tokens greedy decoding would generate after the prompt of `scored`, read off its scores
    instead of running the model, or None where they cannot tell.

    Free decoding (`constrained=False`) follows the model's most likely token while it continues some
    answer, and is read off only if it ends one (a token in `stop_ids`): None when it leaves the
    answers' paths (an answer that is no candidate's title) and must run. Constrained decoding
    (`TitleConstrainedLogitsProcessor` over the answers' titles) picks, among the tokens that continue
    some answer, the best log-likelihood plus `weight` x the best of `answer_scores` (one per answer)
    still reachable through it, as the processor does with the model's logits (the same order: the
    log-softmax shifts every logit of a step alike; ties go to the lower token id, as argmax's).
    None too where the answer would not fit in `max_new_tokens`."""
    alive, path = list(range(len(scored.ids))), []
    while len(path) < max_new_tokens:
        k = len(path)
        options = {}  # next token -> (its log-likelihood, best answer score through it)
        for i in alive:
            if k < len(scored.ids[i]):
                token, score = scored.ids[i][k], -np.inf if answer_scores is None else float(answer_scores[i])
                logp, best = options.get(token, (float(scored.token_logp[i][k]), -np.inf))
                options[token] = (logp, max(best, score))
        if not options:  # every answer ended without a stop token: decoding would go on
            return None
        if constrained:
            value = (lambda t: options[t][0]) if answer_scores is None else (lambda t: options[t][0] + weight * options[t][1])
            token = max(sorted(options), key=value)
        else:
            token = int(scored.top_token[next(i for i in alive if k < len(scored.ids[i]))][k])
            if token not in options:
                return None
        path.append(token)
        alive = [i for i in alive if k < len(scored.ids[i]) and scored.ids[i][k] == token]
        if token in stop_ids or (constrained and all(len(scored.ids[i]) == k + 1 for i in alive)):
            return path
    return None


class ChatModel:
    """
    Args:
        model: an `ILMForConditionalGeneration`, or (with `as_text=True`) any causal LM.
        processor: the model's `ILMProcessor` (for a plain LLM: `prompts.text_processor`).
        as_text: render items as titles and users as ids instead of placeholders.
        batch_size: prompts per generation batch.
        max_new_tokens: generation budget.
        reduce: what `score` returns: "sum" (total log-likelihood of the answer) or "mean" (per
            answer token). `score_parts` returns both parts whatever it is.
        pack_tokens: answer tokens packed behind one prompt per sequence when scoring (`score_rows`):
            256 holds 20 candidate titles.
        guide_weight: weight of the ranking head's scores in head-guided constrained decoding.
    """

    def __init__(self, model, processor, as_text=False, batch_size=16, max_new_tokens=24, reduce="sum", pack_tokens=256, guide_weight=GUIDE_WEIGHT):
        if reduce not in ("sum", "mean"):
            raise ValueError(f"reduce={reduce!r}; use 'sum' or 'mean'.")
        self.model, self.processor, self.as_text = model.eval(), processor, as_text
        self.batch_size, self.max_new_tokens, self.reduce, self.pack_tokens = batch_size, max_new_tokens, reduce, pack_tokens
        self.guide_weight = guide_weight
        self.titles = {item["item_id"]: item["title"] for item in processor.catalog["items"]}
        self.entity_tokens = {} if as_text else self._catalog_tokens()
        self._answer_ids = {}  # answer text -> token ids
        self._content_free = {}  # (noun, answer text) -> summed log-likelihood under content_free_prompt(noun)
        self._ranked = {}  # (prompt, item ids) -> ranking-head scores
        tokenizer = processor.tokenizer
        eos = model.generation_config.eos_token_id
        self.greedy = dict(do_sample=False, eos_token_id=eos if eos is not None else tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)

    @property
    def device(self):
        return self.model.device

    @torch.no_grad()
    def _catalog_tokens(self, chunk=256):
        """Item/user tokens of the whole catalog, computed once: later forwards cost what the bare LLM costs."""
        tokens = {}
        for kind, count, encode in (
            ("item", self.model.config.num_items, self.model.get_item_tokens),
            ("user", self.model.config.num_users, self.model.get_user_tokens),
        ):
            ids = torch.arange(count, device=self.device)
            if count:
                tokens[kind] = torch.cat([encode(ids[i : i + chunk]) for i in range(0, count, chunk)])
        return tokens

    def encode(self, prompts) -> dict:
        """Left-padded model inputs for a batch of `Prompt`s, ending with the generation prompt."""
        if self.as_text:
            prompts = [as_text(p, self.titles) for p in prompts]
        batch = self.processor(
            messages=[p.messages for p in prompts],
            item_ids=[p.item_ids for p in prompts],
            user_ids=[p.user_ids for p in prompts],
            add_generation_prompt=True,
        )
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        for kind in ("item", "user"):
            if f"{kind}_ids" in batch:  # -1 pads rows with fewer entities; the model skips those slots
                inputs[f"{kind}_tokens"] = self.entity_tokens[kind][batch[f"{kind}_ids"].clamp(min=0).to(self.device)]
        return {k: v.to(self.device) for k, v in inputs.items()}

    @property
    def has_ranking_head(self) -> bool:
        return not self.as_text and getattr(self.model, "item_scorer", None) is not None

    def rank(self, prompt, item_ids=None) -> np.ndarray:
        """The ranking head's score of each item (catalog ids; None: the whole catalog in row order)
        for one prompt. The head scores each item on its own, so the whole catalog is scored once per
        prompt and any candidates are read from that (memoised: like the catalog's item tokens, this
        assumes the model does not change; the head sections and head-guided decoding share it)."""
        key = repr(prompt)
        if key not in self._ranked:
            self.rank_prompts([prompt])
        scores = self._ranked[key]
        return scores[self.processor.rows(item_ids)] if item_ids is not None else scores.copy()

    @torch.no_grad()
    def rank_prompts(self, prompts, desc="ranking head"):
        """Scores the whole catalog for each prompt not ranked yet, `batch_size` prompts per forward
        (left-padded: the head reads the last attended position)."""
        todo = list({repr(p): p for p in prompts if repr(p) not in self._ranked}.values())
        for start in tqdm(range(0, len(todo), self.batch_size), desc=desc, leave=False, disable=len(todo) <= self.batch_size):
            chunk = todo[start : start + self.batch_size]
            scores = self.model.score_items(**self.encode(chunk), candidate_tokens=self.entity_tokens["item"]).float().cpu().numpy()
            self._ranked.update({repr(p): row for p, row in zip(chunk, scores)})

    def answer_ids(self, answer: str) -> list:
        """Token ids of an assistant answer as the chat template renders it, up to its end-of-turn
        token (e.g. "Heat (1995)<|im_end|>"), tokenized in context."""
        if answer not in self._answer_ids:
            self._answer_ids[answer] = self._tokenize_answer(answer)
        return self._answer_ids[answer]

    def _tokenize_answer(self, answer: str) -> list:
        tokenizer, template = self.processor.tokenizer, self.processor.chat_template
        chat = [{"role": "user", "content": "?"}]
        prompt = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True, chat_template=template)
        full = tokenizer.apply_chat_template(chat + [{"role": "assistant", "content": answer}], tokenize=False, chat_template=template)
        if not full.startswith(prompt):
            raise ValueError("The chat template does not render the generation prompt as a prefix of the answered chat.")
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(full.rstrip(), add_special_tokens=False)["input_ids"]
        if full_ids[: len(prompt_ids)] != prompt_ids:  # a token merged across the boundary: tokenize the answer alone
            return tokenizer(full[len(prompt) :].rstrip(), add_special_tokens=False)["input_ids"]
        return full_ids[len(prompt_ids) :]

    def score(self, prompt, answers) -> np.ndarray:
        """Log-likelihood of each answer text given one prompt: the total over the answer's tokens,
        or (reduce="mean") the mean per answer token. See `score_parts`."""
        sums, lengths = self.score_parts(prompt, answers)
        return sums / lengths if self.reduce == "mean" else sums

    @torch.no_grad()
    def prefill(self, prompts, rank=False) -> Prefill:
        """Runs a batch of prompts once (see `Prefill`); `score_rows` and `generate_batch` read it.
        `rank`: the same forward also ranks the catalog with the ranking head (kept for `rank`)."""
        inputs = self.encode(prompts)
        positions = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        ranking = {"rank_item_tokens": self.entity_tokens["item"]} if rank and self.has_ranking_head else {}
        last = torch.tensor([inputs["input_ids"].shape[1] - 1], device=self.device)  # an index, not 1: see ILMForConditionalGeneration.forward
        out = self.model(**inputs, position_ids=positions, use_cache=True, logits_to_keep=last, **ranking)
        if ranking:
            self._ranked.update({repr(p): row for p, row in zip(prompts, out.rank_logits.float().cpu().numpy())})
        return Prefill(inputs, out.cache, out.logits[:, -1])

    def score_parts(self, prompt, answers) -> tuple:
        """(sums, lengths): each answer's summed log-likelihood given one prompt, and its number of
        answer tokens (`answer_ids`, end-of-turn token included); sums / lengths is the mean per token.

        The prompt runs once; the answers follow it packed with a block mask (`score_rows`): they
        do not see each other, so the scores do not depend on their order.
        """
        scored = self.score_rows(self.prefill([prompt]), [answers])[0]
        return scored.sums, scored.lengths

    @torch.no_grad()
    def score_rows(self, prefill: Prefill, answers_per_row) -> list:
        """A `ScoredAnswers` for each prompt of a prefilled batch with its own answers.

        A row's answers are packed one after another behind its cached prompt (at most `pack_tokens`
        tokens a sequence), and a block mask lets each answer attend to the prompt and to its own
        earlier tokens only, so each is scored as if alone; a batch's answers take a few large
        forwards instead of one small one per group of answers."""
        ids = [[self.answer_ids(a) for a in answers] for answers in answers_per_row]
        first = prefill.last_logits.float().log_softmax(-1)  # predicts each answer's first token
        first_top = first.argmax(-1).tolist()
        logp = [[first[row, [a[0]]].double().cpu().numpy() for a in row_ids] for row, row_ids in enumerate(ids)]
        top = [[np.array([first_top[row]]) for _ in row_ids] for row, row_ids in enumerate(ids)]
        packs, pack, used = [], None, 0  # (row, answer indices); answers of one token need no forward
        for row, row_ids in enumerate(ids):
            for i, answer in enumerate(row_ids):
                if len(answer) < 2:
                    continue
                if pack is None or pack[0] != row or used + len(answer) - 1 > self.pack_tokens:
                    pack, used = (row, []), 0
                    packs.append(pack)
                pack[1].append(i)
                used += len(answer) - 1
        for start in range(0, len(packs), self.batch_size):
            group = packs[start : start + self.batch_size]
            scored = self._score_packs(prefill, [[ids[row][i] for i in members] for row, members in group], [row for row, _ in group])
            for (row, members), answers in zip(group, scored):
                for i, (answer_logp, answer_top) in zip(members, answers):
                    logp[row][i] = np.concatenate([logp[row][i], answer_logp])
                    top[row][i] = np.concatenate([top[row][i], answer_top])
        return [ScoredAnswers(row_ids, row_logp, row_top) for row_ids, row_logp, row_top in zip(ids, logp, top)]

    def _score_packs(self, prefill, packs, rows) -> list:
        """For sequences of packed answers (token ids), each behind the cached prompt of its row of
        `prefill`: per answer, the log-likelihood of each of its tokens after the first and the most
        likely token in its place."""
        width = max(sum(len(a) - 1 for a in answers) for answers in packs)
        tokens, targets = torch.zeros(len(packs), width, dtype=torch.long), torch.zeros(len(packs), width, dtype=torch.long)
        positions, segments = torch.zeros(len(packs), width, dtype=torch.long), torch.full((len(packs), width), -1)
        prompt_mask = prefill.inputs["attention_mask"][rows].bool()
        prompt_lengths = prompt_mask.sum(-1).cpu()
        for g, answers in enumerate(packs):
            offset = 0
            for k, answer in enumerate(answers):
                n = len(answer) - 1
                tokens[g, offset : offset + n], targets[g, offset : offset + n] = torch.tensor(answer[:-1]), torch.tensor(answer[1:])
                positions[g, offset : offset + n] = prompt_lengths[g] + torch.arange(n)  # as the prefill counts: real tokens only
                segments[g, offset : offset + n] = k
                offset += n
        own = (segments[:, :, None] == segments[:, None, :]) & torch.ones(width, width, dtype=torch.bool).tril()
        allowed = torch.cat([prompt_mask.cpu()[:, None, :].expand(-1, width, -1), own], -1)[:, None]
        mask = torch.zeros(allowed.shape, dtype=self.model.dtype).masked_fill(~allowed, torch.finfo(self.model.dtype).min)
        cache = prefill.select(rows).cache  # a copy: the prefill's stays
        logits = self.model(input_ids=tokens.to(self.device), attention_mask=mask.to(self.device), position_ids=positions.to(self.device), cache=cache).logits
        targets = targets.to(self.device)
        out = []
        for row, target, answers in zip(logits, targets, packs):  # one sequence at a time: small softmax temporaries
            token_logp = (-nn.functional.cross_entropy(row.float(), target, reduction="none")).double().cpu().numpy()
            top = row.argmax(-1).cpu().numpy()
            bounds = np.cumsum([0] + [len(a) - 1 for a in answers])
            out.append([(token_logp[a:b], top[a:b]) for a, b in zip(bounds[:-1], bounds[1:])])
        return out

    def content_free_scores(self, answers, noun="item") -> np.ndarray:
        """Summed log-likelihood of each answer under `content_free_prompt(noun)`, the prior that
        calibrated ranking subtracts. Memoised per ChatModel: each title is scored once, and the
        titles not seen yet are scored together in one `score_parts` pass."""
        missing = list(dict.fromkeys(a for a in answers if (noun, a) not in self._content_free))
        if missing:
            sums, _ = self.score_parts(content_free_prompt(noun), missing)
            self._content_free.update({(noun, a): float(s) for a, s in zip(missing, sums)})
        return np.array([self._content_free[(noun, a)] for a in answers], dtype=float)

    def generate(self, prompts, desc="generate", max_new_tokens=None, candidates=None, candidate_scores=None, rank=False) -> list:
        """Greedy answers (decoded, stripped) for a list of `Prompt`s, in batches.
        `max_new_tokens` lowers the budget for this call (never above the model's).
        `candidates`: one list of item ids per prompt; decoding is then constrained to their
        titles (a prefix trie), so every answer names one of them. `candidate_scores`: a score per
        candidate per prompt (the ranking head's) that guides the constrained decoding
        (`guide_weight` x score; see `TitleConstrainedLogitsProcessor`). `rank`: the prompts'
        forward also ranks the catalog with the head (`prefill`), so a later `rank` reads it."""
        answers = []
        for start in tqdm(range(0, len(prompts), self.batch_size), desc=desc, leave=False):
            batch = slice(start, start + self.batch_size)
            # a bare LLM's own generate takes the prompt's last logits by a strided slice, slow with a frozen
            # LM head (see ILMForConditionalGeneration.forward): its prompts are prefilled here
            inputs = self.prefill(prompts[batch], rank=rank) if rank or self.as_text else self.encode(prompts[batch])
            answers += self.generate_batch(
                inputs, max_new_tokens, None if candidates is None else candidates[batch], None if candidate_scores is None else candidate_scores[batch],
            )
        return answers

    @torch.no_grad()
    def generate_batch(self, inputs, max_new_tokens=None, candidates=None, candidate_scores=None, scored=None) -> list:
        """`generate` for one batch: `inputs` from `encode`, or a `Prefill` whose cache spares the
        prompts' forward. `scored`: the `score_rows` of that prefill with the titles of `candidates`
        (or of any answers, for free decoding): each row whose greedy answer follows one of them
        is read off (`follow_answers`), and only the others run."""
        budget = min(max_new_tokens or self.max_new_tokens, self.max_new_tokens)
        if scored is not None:
            if not isinstance(inputs, Prefill):
                raise TypeError("`scored` answers need the `Prefill` they were scored on.")
            return self._answers_from_scores(inputs, scored, budget, candidates, candidate_scores)
        config = GenerationConfig(**self.greedy, max_new_tokens=budget)
        if isinstance(inputs, Prefill):  # the cache holds the item tokens: only ids and mask are read
            inputs = {"input_ids": inputs.inputs["input_ids"], "attention_mask": inputs.inputs["attention_mask"], "cache": inputs.generation_cache()}
        constraint = None
        if candidates is not None:
            constraint = self.processor.title_constraint(inputs["input_ids"], candidates, candidate_scores, self.guide_weight)
        out = self.model.generate(**inputs, generation_config=config, logits_processor=constraint)
        new = out[:, inputs["input_ids"].shape[1] :]
        return [text.strip() for text in self.processor.batch_decode(new, skip_special_tokens=True)]

    def _answers_from_scores(self, prefill, scored, budget, candidates=None, candidate_scores=None) -> list:
        """`generate_batch` where `scored` tells the answer; the rows it cannot tell run together."""
        stop = self.greedy["eos_token_id"]
        stop = set(stop) if isinstance(stop, (list, tuple)) else {stop}
        paths, constrained = [], candidates is not None
        trie = catalog_trie(self.processor) if constrained else None  # each title's ids as the constraint's tries hold them
        for row, row_scored in enumerate(scored):
            if constrained and row_scored.ids != [trie.sequences[r] for r in self.processor.rows(candidates[row])]:
                paths.append(None)  # the constraint's trie tokenizes these titles otherwise: decode for real
                continue
            answer_scores = None if candidate_scores is None else candidate_scores[row]
            paths.append(follow_answers(row_scored, stop, budget, constrained, answer_scores, self.guide_weight))
        answers = [None if path is None else self.processor.decode(path, skip_special_tokens=True).strip() for path in paths]
        todo = [row for row, answer in enumerate(answers) if answer is None]
        if todo:
            pick = lambda values: None if values is None else [values[row] for row in todo]  # noqa: E731
            generated = self.generate_batch(prefill.select(todo), budget, pick(candidates), pick(candidate_scores))
            for row, answer in zip(todo, generated):
                answers[row] = answer
        return answers

    def match_item(self, text, candidates):
        return match_answer(self.processor, text, candidates)


def match_answer(processor, text, candidates) -> str:
    """The candidate an answer names, or "": `processor.match_item` on the whole answer, else the one
    candidate whose normalised title the answer contains (verbose answers such as "I would pick Heat
    (1995)."); an answer containing several candidate titles names none."""
    found = processor.match_item(text, candidates=candidates)
    if found:
        return found
    answer = f" {normalize_title(text)} "
    inside = [c for c in candidates if f" {normalize_title(processor.item(c)['title'])} " in answer]
    return inside[0] if len(inside) == 1 else ""
