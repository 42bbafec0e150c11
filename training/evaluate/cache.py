"""A disk cache for the text-only baseline: its sections do not depend on any training, yet they
cost minutes per evaluation job, so they are computed once per (LLM, data, protocol).

A result is one JSON file, `<folder>/<key>.json`, the folder being (first that applies):
`cache_dir=` (False: no cache), the environment variable ILM_CACHE_DIR (this folder itself),
`baselines/` in the project's cache root (assets.cache_dir(): $ILM_CACHE, default ~/.cache/ilm),
so by default `~/.cache/ilm/baselines`.
Files are written atomically (a temporary file in the same folder, then os.replace), so concurrent
jobs at worst compute the same result twice. Delete the folder to clear the cache.

The key is a sha256 over (see `text_baseline_key`):
1. the LLM: a hash of its weights, i.e. of every tensor of `llm.state_dict()` (name, dtype, shape and
   bytes, in sorted name order; the loaded weights rather than the checkpoint files, so the key does
   not depend on where or how the LLM was loaded: from --llm, or reloaded as an ILM's frozen LLM),
   plus the tokenizer the baseline prompts with (chat templates, vocabulary, special token ids);
2. the data: the catalog's (item id, title) pairs in order, the bytes of the candidates file, and the
   evaluated users with their candidates in display order, targets and full histories;
3. the protocol: `protocol.describe(bootstrap)`, its item noun, the sections, the templates (ids and
   text) and the content-free prompt, max_new_tokens, reduce, full_catalog, the generation batch size,
   the device type (cpu / cuda: the numerics may differ), and CACHE_VERSION, which is raised whenever
   the code that computes the sections changes what they contain.
"""

import datetime
import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from training.assets import cache_dir as cache_root
from training.atomic import write_text_atomic
from training.data.templates import get_template

from .lm import content_free_prompt
from .prompts import CANDIDATE_TEMPLATE, NEXT_ITEM_TEMPLATE

log = logging.getLogger(__name__)

CACHE_VERSION = 1
ENV_VAR = "ILM_CACHE_DIR"


def cache_folder(cache_dir=None):
    """The cache folder: `cache_dir`, else $ILM_CACHE_DIR, else <$ILM_CACHE or ~/.cache/ilm>/baselines;
    None when `cache_dir` is False (caching off)."""
    if cache_dir is False:
        return None
    if cache_dir is None or cache_dir is True:
        cache_dir = os.environ.get(ENV_VAR) or cache_root() / "baselines"
    return Path(cache_dir).expanduser()


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def weights_hash(model) -> str:
    """sha256 of a model's state_dict: each tensor's name, dtype, shape and bytes, names sorted."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy())  # raw bytes (bfloat16 included), no copy
    return h.hexdigest()


def llm_identity(chat_model) -> dict:
    model, processor = chat_model.model, chat_model.processor
    tokenizer = processor.tokenizer
    return {
        "weights": weights_hash(model),
        "chat_template": [processor.chat_template, tokenizer.chat_template],
        "vocab_size": len(tokenizer),
        "vocab": _digest(tokenizer.get_vocab()),
        "special_ids": [tokenizer.eos_token_id, tokenizer.pad_token_id, model.generation_config.eos_token_id],
    }


def data_identity(protocol) -> dict:
    users = protocol.users
    return {
        "catalog_titles": _digest([[item["item_id"], item["title"]] for item in protocol.catalog["items"]]),
        "candidates_file": hashlib.sha256(Path(protocol.candidates_file).read_bytes()).hexdigest(),
        "users": _digest({
            "users": users,
            "candidates": [protocol.candidates[u] for u in users],
            "targets": [protocol.targets[u] for u in users],
            "histories": [protocol.histories[u] for u in users],
        }),
    }


def text_baseline_key(chat_model, protocol, sections, bootstrap, full_catalog=False) -> tuple:
    """(key, parts): the sha256 key of the text baseline's sections for this chat model (a text-only
    `ChatModel`, which carries max_new_tokens, reduce and batch_size), protocol and options, and the
    hashed parts it is made of (stored with the result, for inspection)."""
    templates = (CANDIDATE_TEMPLATE, NEXT_ITEM_TEMPLATE)
    parts = {
        "cache_version": CACHE_VERSION,
        "llm": llm_identity(chat_model),
        "data": data_identity(protocol),
        "protocol": {
            "describe": protocol.describe(bootstrap),
            "noun": protocol.noun,
            "sections": sorted(set(sections)),
            "templates": {t: list(get_template(t)) for t in templates},
            "content_free_prompt": content_free_prompt(protocol.noun).messages,
            "max_new_tokens": chat_model.max_new_tokens,
            "reduce": chat_model.reduce,
            "full_catalog": bool(full_catalog),
            "batch_size": chat_model.batch_size,
            "device": chat_model.device.type,
        },
    }
    return _digest(parts), parts


def load(folder, key):
    """The stored result of `key`, or None (missing or unreadable file)."""
    path = Path(folder) / f"{key}.json"
    if not path.exists():
        return None
    try:
        entry = json.loads(path.read_text())
        if entry.get("key") == key and entry.get("cache_version") == CACHE_VERSION:
            return entry["result"]
    except (OSError, ValueError, KeyError, AttributeError) as err:
        log.warning("Ignoring the unreadable cache file %s (%s).", path, err)
    return None


def store(folder, key, result, parts=None) -> Path:
    """Writes `<folder>/<key>.json` atomically (temporary file in the same folder, then os.replace)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entry = {
        "cache_version": CACHE_VERSION,
        "key": key,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "parts": parts,
        "result": result,
    }
    return write_text_atomic(folder / f"{key}.json", json.dumps(entry, indent=1))


def cached(key, compute, cache_dir=None, parts=None, what="text baseline", on_hit=None):
    """compute() once per key: a stored result when there is one (passed to `on_hit` too), else
    compute(), stored as JSON. `parts`: what the key was made of, stored alongside for inspection."""
    folder = cache_folder(cache_dir)
    if folder is None:
        return compute()
    result = load(folder, key)
    if result is not None:
        log.info("%s: cached (key %s, %s)", what, key[:16], folder / f"{key}.json")
        if on_hit is not None:
            on_hit(result)
        return result
    result = compute()
    path = store(folder, key, result, parts)
    log.info("%s: computed and cached (key %s, %s)", what, key[:16], path)
    return result
