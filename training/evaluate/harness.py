"""evaluate_model / evaluate_baselines: every section for one ILM, or the baselines, on one protocol.

Both return {"protocol": {...}, "models": {name: {section: {metric: {"value", "ci95"}}}}}, the shape
of results.json (see report.py); results of separate calls combine with report.merge_results.
"""

import logging
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from training.assets import default_qformer_path, resolve_llm

from .alignment import SentenceEmbedder, alignment_section, load_alignment_rows
from .baselines import als_scorer, popularity_scorer
from .lm import ChatModel
from .preservation import max_logit_difference
from .prompts import text_processor
from .protocol import load_protocol
from .recommendation import full_catalog_section, generation_section, likelihood_scorer, ranking_section

log = logging.getLogger(__name__)

SECTIONS = ("ranking", "generation", "full_catalog", "alignment", "preservation")
LLM_SECTIONS = ("ranking", "generation", "full_catalog")  # what the text-only baseline can be asked
BASELINES = ("pop", "als", "text")


def check_names(given, known, what):
    unknown = set(given) - set(known)
    if unknown:
        raise ValueError(f"Unknown {what} {sorted(unknown)}; choose from {list(known)}.")


def get_protocol(data_dir, protocol=None, **protocol_kwargs):
    return protocol if protocol is not None else load_protocol(data_dir, **protocol_kwargs)


def log_section(name, section, values):
    text = "  ".join(f"{k} {v['value']:.4f}" if v["value"] is not None else f"{k} -" for k, v in values.items() if isinstance(v, dict))
    log.info("%s / %s: %s", name, section, text)


def llm_sections(chat_model, protocol, sections, name, full_catalog=False, bootstrap=1000):
    """The recommendation sections any chat model (ILM or text-only LLM) is evaluated on."""
    seed, out = protocol.seed, {}
    if "ranking" in sections:
        out["ranking"] = ranking_section(likelihood_scorer(chat_model, protocol), protocol, bootstrap, seed, desc=f"{name} ranking")
    if "generation" in sections:
        out["generation"] = generation_section(chat_model, protocol, bootstrap, seed)
    if "full_catalog" in sections:
        out["full_catalog"] = full_catalog_section(chat_model, protocol, full_catalog, bootstrap, seed)
    for section, values in out.items():
        log_section(name, section, values)
    return out


def evaluate_model(
    model,
    processor,
    data_dir,
    name="ilm",
    protocol=None,
    split="test",
    candidates_file=None,
    users=None,
    seed=0,
    bootstrap=1000,
    history_len=10,
    sections=SECTIONS,
    full_catalog=False,
    alignment_rows=200,
    batch_size=16,
    max_new_tokens=24,
    reduce="sum",
    sentence_model=None,
    base_llm=None,
) -> dict:
    """Evaluates one ILM (`ILMForConditionalGeneration` + `ILMProcessor`) on a built data folder.

    `protocol`: a `protocol.Protocol` to reuse (then split/candidates_file/users/seed/history_len
    are ignored). `full_catalog`: also rank every catalog item by likelihood (slow on CPU).
    `alignment_rows`: rows per alignment task and split (None: all).
    `sentence_model`: path of the encoder for semantic consistency (default: the MiniLM asset).
    `base_llm`: the frozen LLM to compare logits with (default: reloaded from the model's config).
    """
    check_names(sections, SECTIONS, "sections")
    protocol = get_protocol(data_dir, protocol, split=split, candidates_file=candidates_file, users=users, seed=seed, history_len=history_len)
    start = time.perf_counter()
    chat_model = ChatModel(model, processor, batch_size=batch_size, max_new_tokens=max_new_tokens, reduce=reduce)
    result = llm_sections(chat_model, protocol, sections, name, full_catalog, bootstrap)
    if "alignment" in sections:
        embedder = SentenceEmbedder(sentence_model or default_qformer_path())
        result["alignment"] = {}
        for kind, split_name in (("seen", protocol.split), ("unseen", f"{protocol.split}_unseen")):
            rows = load_alignment_rows(data_dir, split_name, alignment_rows)
            values = alignment_section(chat_model, rows, embedder, bootstrap, protocol.seed, desc=f"alignment ({kind})")
            result["alignment"][kind] = values
            log_section(name, f"alignment {kind} ({len(rows)} rows)", values)
    if "preservation" in sections:
        base_llm = base_llm if base_llm is not None else load_base_llm(model)
        result["preservation"] = {"max_abs_logit_diff": max_logit_difference(model, processor, base_llm)}
        log.info("%s / preservation: max |logit diff| vs the base LLM = %g", name, result["preservation"]["max_abs_logit_diff"])
    result["timing_s"] = round(time.perf_counter() - start, 1)
    log.info("%s: evaluated in %.1fs", name, result["timing_s"])
    return {"protocol": protocol.describe(bootstrap), "models": {name: result}}


def load_base_llm(model):
    """The ILM's frozen LLM as published (config.text_model_name_or_path), to check it is unchanged."""
    path = model.config.text_model_name_or_path
    if not path:
        log.warning("The model names no text_model_name_or_path: comparing with its own language_model.")
        return model.language_model
    return AutoModelForCausalLM.from_pretrained(path, dtype=model.language_model.dtype).to(model.device).eval()


def evaluate_baselines(
    data_dir,
    baselines=BASELINES,
    llm=None,
    tokenizer=None,
    llm_path="default",
    protocol=None,
    split="test",
    candidates_file=None,
    users=None,
    seed=0,
    bootstrap=1000,
    history_len=10,
    sections=LLM_SECTIONS,
    full_catalog=False,
    batch_size=16,
    max_new_tokens=24,
    reduce="sum",
    device="cpu",
) -> dict:
    """Popularity and ALS (ranking only), and text-only prompting of a frozen LLM (`llm` +
    `tokenizer`, else loaded from `llm_path`, "default" being the embedded default LLM): same users,
    candidates and templates. `device`: where a loaded LLM runs."""
    check_names(baselines, BASELINES, "baselines")
    check_names(sections, SECTIONS, "sections")
    protocol = get_protocol(data_dir, protocol, split=split, candidates_file=candidates_file, users=users, seed=seed, history_len=history_len)
    scorers = {"pop": popularity_scorer, "als": als_scorer}
    models = {}
    if "text" in baselines and llm is None:
        path = resolve_llm(llm_path)
        llm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
    if "text" in baselines and tokenizer is None:
        raise ValueError("The text baseline needs the LLM's tokenizer with `llm`.")
    for name in baselines:
        start = time.perf_counter()
        if name in scorers:
            models[name] = {"ranking": ranking_section(scorers[name](data_dir), protocol, bootstrap, protocol.seed, desc=name)}
            log_section(name, "ranking", models[name]["ranking"])
        else:
            chat_model = ChatModel(llm, text_processor(tokenizer, protocol.catalog), as_text=True, batch_size=batch_size, max_new_tokens=max_new_tokens, reduce=reduce)
            models[name] = llm_sections(chat_model, protocol, [s for s in sections if s in LLM_SECTIONS], name, full_catalog, bootstrap)
        models[name]["timing_s"] = round(time.perf_counter() - start, 1)
    return {"protocol": protocol.describe(bootstrap), "models": models}
