"""Building, saving and loading ILMs: what `modeling_ilm.py`'s `from_components`, `save_pretrained`,
`from_pretrained` and `load_adapter` do, kept apart from the model's computation.

- fresh models from components: a causal LM (Hub id, path or GGUF file, dequantised) and a
  BERT-family encoder whose weights initialise the Q-Former;
- light folders: trained weights only, the frozen LLM named by `config.text_model_name_or_path`;
- LoRA on the frozen LLM, saved also as a standard PEFT adapter (`llm_adapter/`).
Saved folders carry this file with the model code (it is a relative import), so remote code has it.
"""

import copy
import itertools
import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PreTrainedModel
from transformers.utils import cached_file, logging

from .configuration_ilm import ILMConfig

logger = logging.get_logger(__name__)

# A BERT-family config's fields that shape the Q-Former initialised from it.
QFORMER_FROM_BERT = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "hidden_act", "max_position_embeddings", "layer_norm_eps", "pad_token_id",
)
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")  # the Auto classes pass proxies too
LLM_ADAPTER_FOLDER = "llm_adapter"  # the LoRA of a LoRA-enabled ILM, as a PEFT adapter of the base LLM
LORA_CONFIG_KEYS = ("r", "lora_alpha", "lora_dropout", "target_modules", "bias", "use_rslora", "use_dora")


def with_lora(language_model, lora_config: dict):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(language_model, LoraConfig(**{"lora_dropout": 0.0, **lora_config}))


def dequantized_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A plain (serializable) copy of a model loaded from a quantized file such as GGUF."""
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    return plain.eval()


def qformer_config_from(bert_config, overrides: dict | None = None) -> dict:
    """The Q-Former's shape, taken from the BERT-family encoder that initialises it."""
    return {**{key: getattr(bert_config, key) for key in QFORMER_FROM_BERT}, **(overrides or {})}


def resolve_table_settings(config_kwargs: dict, item_embeddings) -> None:
    """Config fields read off the item CF table: its width, and `cf_scale="table"` (the RMS of its entries)."""
    if item_embeddings is None:
        if config_kwargs.get("cf_scale") == "table":
            raise ValueError('cf_scale="table" needs item_embeddings; pass them or give cf_scale as a number.')
        return
    table = torch.as_tensor(item_embeddings, dtype=torch.float32)
    config_kwargs.setdefault("cf_dim", table.shape[1])
    if config_kwargs.get("cf_scale") == "table":
        config_kwargs["cf_scale"] = table.pow(2).mean().sqrt().item()


def build_generation_model(cls, text_model_name_or_path, qformer_name_or_path=None, *, llm_kwargs=None,
                           item_embeddings=None, user_embeddings=None, item_token_id=None, user_token_id=None, **config_kwargs):
    """`ILMForConditionalGeneration.from_components` (see there)."""
    llm = AutoModelForCausalLM.from_pretrained(text_model_name_or_path, **{"dtype": torch.float32, **(llm_kwargs or {})})
    if getattr(llm, "hf_quantizer", None) is not None:  # e.g. GGUF: we keep the dequantized weights
        llm = dequantized_copy(llm)
    qformer_config = config_kwargs.pop("qformer_config", None)
    bert = None
    if qformer_name_or_path is not None:
        qformer_config = qformer_config_from(AutoConfig.from_pretrained(qformer_name_or_path), qformer_config)
        bert = AutoModel.from_pretrained(qformer_name_or_path, dtype=torch.float32)
    resolve_table_settings(config_kwargs, item_embeddings)
    config = ILMConfig(
        qformer_config=qformer_config,
        text_config=copy.deepcopy(llm.config),  # the LLM keeps its own, with its attention backend set
        text_model_name_or_path=str(text_model_name_or_path),
        item_token_id=item_token_id,
        user_token_id=user_token_id,
        **config_kwargs,
    )
    model = cls(config, language_model=llm)
    if bert is not None and model.item_encoder is not None:
        model.item_encoder.load_bert_weights(bert.state_dict())
    model.set_cf_embeddings(item_embeddings, user_embeddings)
    model.generation_config = llm.generation_config
    return model


def build_pretraining_model(cls, text_model_name_or_path, qformer_name_or_path, *, item_embeddings=None, user_embeddings=None, **config_kwargs):
    """`ILMForItemTextPretraining.from_components` (see there): the LLM is named, not loaded."""
    bert = AutoModel.from_pretrained(qformer_name_or_path, dtype=torch.float32)
    resolve_table_settings(config_kwargs, item_embeddings)
    config = ILMConfig(
        qformer_config=qformer_config_from(bert.config, config_kwargs.pop("qformer_config", None)),
        text_config=AutoConfig.from_pretrained(text_model_name_or_path),
        text_model_name_or_path=str(text_model_name_or_path),
        **config_kwargs,
    )
    model = cls(config)
    model.item_encoder.load_bert_weights(bert.state_dict())
    model.set_cf_embeddings(item_embeddings, user_embeddings)
    return model


def load_llm_adapter(model, adapter_path: str, adapter_name: str = "default", **kwargs):
    """`ILMForConditionalGeneration.load_adapter` (see there)."""
    from peft import PeftConfig, PeftModel

    adapter_config = PeftConfig.from_pretrained(adapter_path, **kwargs)
    try:
        if isinstance(model.language_model, PeftModel):
            model.language_model.load_adapter(adapter_path, adapter_name=adapter_name, **kwargs)
            model.language_model.set_adapter(adapter_name)
        else:
            model.language_model = PeftModel.from_pretrained(model.language_model, adapter_path, adapter_name=adapter_name, **kwargs)
    except (RuntimeError, ValueError, KeyError) as err:
        raise ValueError(
            f"The adapter at {adapter_path} (for {adapter_config.base_model_name_or_path}) does not fit this model's LLM "
            f"({model.config.text_model_name_or_path}): {err}"
        ) from err
    if not model.config.lora_config:  # saved and reloaded with the model from now on
        fields = adapter_config.to_dict()
        model.config.lora_config = {k: sorted(v) if isinstance(v, (set, list)) else v for k, v in fields.items() if k in LORA_CONFIG_KEYS}
    model.freeze_language_model()


def save_llm_adapter(model, save_directory):
    model.language_model.save_pretrained(os.path.join(save_directory, LLM_ADAPTER_FOLDER))


def trained_state_dict(model, state_dict: dict | None = None) -> dict:
    """What a light folder stores: everything but the frozen LLM (its LoRA weights are trained: kept),
    from `state_dict` (as Trainer passes) or the model's own."""
    if not model.config.text_model_name_or_path:
        raise ValueError("A light save needs `config.text_model_name_or_path` (the frozen LLM's Hub id or path).")
    state_dict = model.state_dict() if state_dict is None else state_dict
    return {k: v for k, v in state_dict.items() if not k.startswith("language_model.") or "lora_" in k}


def hub_kwargs(kwargs: dict) -> dict:
    return {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}


def unreadable_weights(path, err: SafetensorError) -> OSError:
    # safetensors' own message names no file
    return OSError(
        f"The weights of {path} cannot be read ({err}): the safetensors file is truncated or corrupt. "
        "Save the model again, or download it again (force_download=True)."
    )


def aligned(model):
    """Memory-mapped safetensors can leave weights unaligned, and CPU kernels then round
    differently: those are copied, so a reloaded model gives bit-identical logits."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.data_ptr() % 64:
            tensor.data = tensor.data.clone()
    return model


def load_light_checkpoint(cls, path, config, **kwargs):
    """Trained weights from `path`, the frozen LLM from `config.text_model_name_or_path`.

    Also takes a phase-1 (item encoder pretraining) checkpoint: its adapter starts fresh. Takes the
    Hub arguments, `dtype`, `attn_implementation` and a single-device `device_map` ("cpu", "cuda:0");
    any other `from_pretrained` argument is refused by name rather than ignored.
    """
    handled = {*HUB_KWARGS, "dtype", "attn_implementation", "device_map", "text_model_name_or_path", "trust_remote_code", "code_revision"}
    # "_from_auto", adapter_kwargs (its top-level adapter lookup, empty here) & co are the Auto classes' own
    unsupported = sorted(k for k in kwargs if k not in handled and not k.startswith("_") and k != "adapter_kwargs")
    device = kwargs.get("device_map")
    if device is not None and not (isinstance(device, (str, int, torch.device)) and str(device) != "auto"):
        unsupported.append(f"device_map={device!r}")
    if unsupported:
        raise ValueError(
            f"{path} is a light checkpoint (its LLM loads from {config.text_model_name_or_path!r}), which takes Hub "
            f"arguments, dtype, attn_implementation and a one-device device_map; not {unsupported}. Load it without "
            "them, or save a full folder (save_pretrained(dir)) to load with any from_pretrained argument."
        )
    hub = hub_kwargs(kwargs)
    dtype = kwargs.get("dtype")
    dtype = torch.float32 if dtype in (None, "auto") else getattr(torch, dtype) if isinstance(dtype, str) else dtype
    llm_name = kwargs.get("text_model_name_or_path", config.text_model_name_or_path)
    if not llm_name:
        raise ValueError(f"{path} holds no LLM weights and its config names no `text_model_name_or_path`.")
    # where to find the LLM (revision/subfolder address the ILM repository, not the LLM's)
    llm_hub = {k: hub[k] for k in ("cache_dir", "force_download", "local_files_only", "token", "proxies") if k in hub}
    attention = {"attn_implementation": kwargs["attn_implementation"]} if kwargs.get("attn_implementation") else {}
    llm = AutoModelForCausalLM.from_pretrained(llm_name, dtype=torch.float32, **attention, **llm_hub)
    config.text_model_name_or_path = str(llm_name)
    config.stores_language_model = True
    model = cls(config, language_model=llm)
    weights_file = cached_file(path, "model.safetensors", **hub)
    missing, unexpected = model.load_state_dict(load_file(weights_file), strict=False)
    missing_encoder = [k for k in missing if not k.startswith(("language_model.", "adapter.")) or "lora_" in k]
    if missing_encoder:
        raise ValueError(f"{path} lacks item-encoder weights: {missing_encoder[:5]} ...")
    if any(k.startswith("adapter.") for k in missing):
        logger.warning("%s has no adapter weights (a phase-1 checkpoint?): the adapter starts fresh.", path)
    if unexpected:
        logger.info("Ignored weights not used for generation (phase-1 heads): %s", sorted(unexpected)[:8])
    model.generation_config = llm.generation_config
    model.language_model.to(dtype)  # as from_pretrained does for a full folder (_keep_in_fp32_modules_strict)
    return model.to(torch.device(device) if device is not None else model.device).eval()
