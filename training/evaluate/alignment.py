"""Language alignment: can the model say what an item is from its item tokens alone?

Rows: the phase-2 item_title / item_genres / item_year examples of held-out items, from `<split>`
(seen templates) and `<split>_unseen` (the held-out template), the first `max_rows` per task
(the build already shuffled them with its seed). Greedy answers are compared with the reference:
- title_exact_match: titles equal after normalisation (case, accents, punctuation);
- genre_f1: F1 of the comma-separated genre sets;
- year_accuracy: the first 4-digit number of the answer equals the year;
- semantic_consistency: cosine similarity of sentence embeddings (mean-pooled MiniLM) of answer
  and reference, over all rows of the three tasks (the paper's ELM-24 measure).
"""

import re
from pathlib import Path

import numpy as np
import torch
from datasets import load_from_disk
from transformers import AutoModel, AutoTokenizer

from modeling_ilm.processing_ilm import normalize_title

from .metrics import per_example, summarize
from .prompts import phase2_prompt

TASKS = ("item_title", "item_genres", "item_year")
YEAR = re.compile(r"\b(\d{4})\b")


def load_alignment_rows(data_dir, split: str, max_rows=200) -> list:
    """The first `max_rows` rows of each alignment task in a phase-2 split (None: all of them)."""
    dataset = load_from_disk(str(Path(data_dir) / "phase2" / split))
    tasks = dataset["task"]
    rows = []
    for task in TASKS:
        index = [i for i, t in enumerate(tasks) if t == task][:max_rows]
        rows += list(dataset.select(index))
    return rows


class SentenceEmbedder:
    """Mean-pooled, L2-normalised sentence embeddings (sentence-transformers' recipe for all-MiniLM-L6-v2)."""

    def __init__(self, name_or_path, batch_size=64):
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        self.model = AutoModel.from_pretrained(name_or_path, dtype=torch.float32).eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, texts) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(list(texts[start : start + self.batch_size]), padding=True, truncation=True, max_length=128, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1))
        return torch.cat(out)

    def similarity(self, texts, references) -> np.ndarray:
        return (self(texts) * self(references)).sum(-1).numpy()


def first_year(text: str) -> str:
    match = YEAR.search(text)
    return match.group(1) if match else ""


MEASURES = {  # name: (task, metric config, answer normaliser, reference normaliser)
    "title_exact_match": ("item_title", "exact_match", normalize_title, normalize_title),
    "genre_f1": ("item_genres", "set_f1", str, str),
    "year_accuracy": ("item_year", "exact_match", first_year, str.strip),
}


def alignment_section(chat_model, rows, embedder, n_boot=1000, seed=0, desc="alignment") -> dict:
    pairs = {}  # task -> (answers, references)
    for task in TASKS:
        task_rows = [r for r in rows if r["task"] == task]
        if not task_rows:  # e.g. no genres in a catalog: no item_genres rows
            continue
        references = [r["target"] for r in task_rows]
        # a year needs a few tokens, not a title's budget: stop where the longest reference ends
        budget = max(len(chat_model.answer_ids(t)) for t in references)
        answers = chat_model.generate([phase2_prompt(r) for r in task_rows], desc=f"{desc} {task}", max_new_tokens=budget)
        pairs[task] = (answers, references)
    out = {}
    for name, (task, config, answer_form, reference_form) in MEASURES.items():
        if task in pairs:
            answers, references = pairs[task]
            values = per_example(config, [answer_form(a) for a in answers], [reference_form(t) for t in references])
            out[name] = summarize(next(iter(values.values())), n_boot, seed)
    if pairs:
        answers = [a for task_answers, _ in pairs.values() for a in task_answers]
        references = [t for _, task_references in pairs.values() for t in task_references]
        out["semantic_consistency"] = summarize(embedder.similarity(answers, references), n_boot, seed)
    return out
