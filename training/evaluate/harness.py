"""evaluate_model / evaluate_baselines: every section for one ILM, or the baselines, on one protocol.

Both return {"protocol": {...}, "models": {name: {section: {metric: {"value", "ci95"}}}}}, the shape
of results.json (see report.py); results of separate calls combine with report.merge_results.
"""

import logging
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from training.assets import default_qformer_path, resolve_llm

from . import cache
from .alignment import SentenceEmbedder, alignment_section, load_alignment_rows
from .baselines import als_scorer, popularity_scorer
from .lm import ChatModel
from .preservation import max_logit_difference
from .prompts import text_processor
from .protocol import load_protocol
from .recommendation import (
    LikelihoodScores,
    candidate_prompt_pass,
    full_catalog_section,
    generation_section,
    head_full_catalog_section,
    head_scorer,
    ranking_section,
)

log = logging.getLogger(__name__)

RANKINGS = ("ranking", "ranking_mean", "ranking_calibrated")  # likelihood rankings, one scoring pass for all three
SECTIONS = (*RANKINGS, "ranking_head", "generation", "generation_constrained", "full_catalog", "alignment", "preservation")
LLM_SECTIONS = (*RANKINGS, "generation", "generation_constrained", "full_catalog")  # what the text-only baseline can be asked
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
    if "full_catalog" in sections:  # first: its forwards of the next-item prompts also rank them for the head
        out["full_catalog"] = full_catalog_section(chat_model, protocol, full_catalog, bootstrap, seed)
    likelihood = LikelihoodScores(chat_model, protocol)  # scores each user's candidates once for all three
    generations = [s for s in ("generation", "generation_constrained") if s in sections]
    # one forward of each candidate prompt for the likelihoods and both generations; none when no section reads it
    scored = set(RANKINGS) & set(sections)
    answers = candidate_prompt_pass(chat_model, protocol, likelihood if scored else None, generations) if scored or generations else {}
    for section, score_fn in zip(RANKINGS, (likelihood.reduced, likelihood.mean, likelihood.calibrated)):
        if section in sections:
            out[section] = ranking_section(score_fn, protocol, bootstrap, seed, desc=f"{name} {section}")
    for section in generations:
        out[section] = generation_section(chat_model, protocol, bootstrap, seed, constrained=section == "generation_constrained", answers=answers[section])
    if "ranking_head" in sections and chat_model.has_ranking_head:
        out["ranking_head"] = ranking_section(head_scorer(chat_model, protocol), protocol, bootstrap, seed, desc=f"{name} ranking head")
        out["ranking_head"] |= {f"full_catalog_{k}": v for k, v in head_full_catalog_section(chat_model, protocol, bootstrap, seed).items()}
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
    history_len=None,
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
    result["dtype"] = dtype_name(model)
    log.info("%s: evaluated in %.1fs (%s)", name, result["timing_s"], result["dtype"])
    return {"protocol": protocol.describe(bootstrap), "models": {name: result}}


def dtype_name(model) -> str:
    """The precision of the (frozen) LLM, where the compute is."""
    return str(getattr(model, "language_model", model).dtype).removeprefix("torch.")


def load_base_llm(model):
    """The ILM's frozen LLM as published (config.text_model_name_or_path), to check it is unchanged."""
    path = model.config.text_model_name_or_path
    if not path:
        log.warning("The model names no text_model_name_or_path: comparing with its own language_model.")
        return model.language_model
    # loaded as the ILM loads it (float32), then cast: loading straight into bfloat16 rounds differently
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(model.device, model.language_model.dtype).eval()


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
    history_len=None,
    sections=LLM_SECTIONS,
    full_catalog=False,
    batch_size=16,
    max_new_tokens=24,
    reduce="sum",
    device="cpu",
    dtype=torch.float32,
    cache_dir=None,
) -> dict:
    """Popularity and ALS (ranking only), and text-only prompting of a frozen LLM (`llm` +
    `tokenizer`, else loaded from `llm_path`, "default" being the embedded default LLM): same users,
    candidates and templates. `device` and `dtype`: where and in what precision a loaded LLM runs.

    The text baseline's sections are cached on disk (see cache.py), keyed by the LLM's weights and
    tokenizer, the data and the protocol: `cache_dir` is the folder (default $ILM_CACHE_DIR, else
    ~/.cache/ilm/baselines, ~/.cache/ilm being $ILM_CACHE when set; False: no cache). A cached
    result keeps the timing_s of the run that computed it."""
    check_names(baselines, BASELINES, "baselines")
    check_names(sections, SECTIONS, "sections")
    protocol = get_protocol(data_dir, protocol, split=split, candidates_file=candidates_file, users=users, seed=seed, history_len=history_len)
    scorers = {"pop": popularity_scorer, "als": als_scorer}
    models = {}
    if "text" in baselines and llm is None:
        path = resolve_llm(llm_path)
        llm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device, dtype).eval()  # as load_base_llm
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
    if "text" in baselines and tokenizer is None:
        raise ValueError("The text baseline needs the LLM's tokenizer with `llm`.")
    for name in baselines:
        start = time.perf_counter()
        if name in scorers:
            models[name] = {"ranking": ranking_section(scorers[name](data_dir), protocol, bootstrap, protocol.seed, desc=name)}
            log_section(name, "ranking", models[name]["ranking"])
            models[name]["timing_s"] = round(time.perf_counter() - start, 1)
        else:
            chat_model = ChatModel(llm, text_processor(tokenizer, protocol.catalog), as_text=True, batch_size=batch_size, max_new_tokens=max_new_tokens, reduce=reduce)
            sections_asked = [s for s in sections if s in LLM_SECTIONS]
            models[name] = text_baseline(chat_model, protocol, sections_asked, name, full_catalog, bootstrap, cache_dir)
    return {"protocol": protocol.describe(bootstrap), "models": models}


def text_baseline(chat_model, protocol, sections, name="text", full_catalog=False, bootstrap=1000, cache_dir=None) -> dict:
    """llm_sections of a text-only ChatModel with its timing_s, through the disk cache (cache.py;
    `cache_dir` False: always computed)."""
    start = time.perf_counter()

    def compute():
        return llm_sections(chat_model, protocol, sections, name, full_catalog, bootstrap) | {"timing_s": round(time.perf_counter() - start, 1)}

    if cache.cache_folder(cache_dir) is None:
        return compute() | {"dtype": dtype_name(chat_model.model)}
    key, parts = cache.text_baseline_key(chat_model, protocol, sections, bootstrap, full_catalog)  # the weights' dtype included

    def on_hit(result):
        for section, values in result.items():
            if isinstance(values, dict):
                log_section(name, section, values)

    return cache.cached(key, compute, cache_dir, parts, what=f"{name} baseline", on_hit=on_hit) | {"dtype": dtype_name(chat_model.model)}
