"""Configuration of the Item-Language Model (ILM, arXiv 2406.02844).

Built like transformers' BLIP-2 config: a Q-Former sub-config for the item encoder and a
`text_config` for the frozen causal LM, resolved through `AutoConfig` so any causal LM works.
"""

from transformers import AutoConfig, Blip2QFormerConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

ADAPTER_TYPES = ("qformer", "mlp")
# The default placeholders a prompt holds for an item / a user (one per entity, before expansion)
ITEM_TOKEN, USER_TOKEN = "<item>", "<user>"
PHASE1_LOSSES = ("itc", "itm", "itg", "item_item", "user_item")
# What a saved folder answers to with trust_remote_code=True where this package is not installed:
# every Auto class of the model, and `pipeline("text-generation", ...)` as the ILM chat pipeline
# (modeling_ilm imports pipeline_ilm, so the file travels with the modeling code).
REMOTE_AUTO_MAP = {
    "AutoConfig": "configuration_ilm.ILMConfig",
    "AutoModel": "modeling_ilm.ILMForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_ilm.ILMForConditionalGeneration",
    "AutoModelForPreTraining": "modeling_ilm.ILMForItemTextPretraining",
}
REMOTE_PIPELINES = {"text-generation": {"impl": "pipeline_ilm.ILMPipeline", "pt": ["AutoModelForCausalLM"], "type": "text"}}


class ILMConfig(PreTrainedConfig):
    r"""
    Args:
        qformer_config (`dict` or `Blip2QFormerConfig`):
            The item encoder: a BERT-style Q-Former (hidden size, layers, heads, `cross_attention_frequency`).
            Its `encoder_hidden_size` is the width the CF embedding is projected to before cross-attention.
        text_config (`dict` or `PreTrainedConfig`):
            The frozen causal LM (Llama/SmolLM, Qwen2, GPT-2, ...). Defaults to a Llama config.
        num_query_tokens (`int`):
            Learned queries of the Q-Former, i.e. LLM tokens per item/user.
        cf_dim (`int`):
            Width of the collaborative-filtering embeddings (item and user tables share it).
        num_cf_tokens (`int`):
            The CF vector is projected into this many key/value tokens for the cross-attention,
            so the queries can attend to different parts of it (one token would make every
            query receive the same cross-attention output).
        cf_residual (`bool`):
            Adds each CF token to the output of the query at its position (needs `num_cf_tokens ==
            num_query_tokens`): a residual path around the Q-Former, so the item tokens keep the CF
            vectors' geometry, which a few cross-attention layers otherwise blur (benchmarks/quality.md).
        cf_scale (`float`, *optional*):
            How CF vectors are standardised before they meet learned weights. None: each vector is
            layer-normalised, which drops its length. A number: vectors are divided by it (phase 1 sets
            the RMS of the item table's entries), so each keeps its length, which in ALS grows with the
            item's number of interactions (benchmarks/quality.md, row cf_length).
        num_items / num_users (`int`):
            Rows of the frozen CF tables stored in the model. 0 means callers pass raw CF vectors.
        adapter_type (`str`):
            `"qformer"` (ILM) or `"mlp"` (CoLLM-style baseline: CF vector -> MLP -> item tokens).
        mlp_hidden_size (`int`):
            Hidden width of the MLP adapter.
        item_token / user_token (`str`) and item_token_id / user_token_id (`int`):
            Placeholders in the prompt, each expanded by the processor to `num_query_tokens` copies.
            Their ids may lie outside the LLM vocabulary: they are never looked up in its embeddings.
        text_model_name_or_path (`str`):
            Hub id or path of the frozen LLM; a "light" checkpoint reloads the LLM from here.
        stores_language_model (`bool`):
            False in a light checkpoint, whose weights file holds everything but the frozen LLM.
        lora_config (`dict`, *optional*):
            `peft.LoraConfig` fields for optional LoRA on the LLM (e.g. `{"r": 8, "target_modules": ["q_proj", "v_proj"]}`).
            Off by default: with it, text-only outputs no longer equal the base LLM's (they do again
            inside `model.language_model.disable_adapter()`).
        contrastive_dim (`int`):
            Width of the normalised features used by the phase-1 contrastive losses (BLIP-2: 256).
        phase1_loss_weights (`dict`):
            Weight of each phase-1 loss (`itc`, `itm`, `itg`, `item_item`, `user_item`); 0 switches it off.
        text_pooling (`str`):
            Text feature for ITC: `"mean"` over tokens (right for sentence encoders such as the default
            all-MiniLM-L6-v2) or `"cls"` (BLIP-2 with bert-base).
        ranking_head (`bool`):
            Adds `item_scorer`, a ranking head (as E4SRec does): it scores catalog items against the
            frozen LLM's last hidden state through their item tokens, so one forward ranks the whole
            catalog. Trained with a softmax over items beside the answer loss (`rank_labels`).
        ranking_dim (`int`):
            Width of the ranking head's query/key space.
        ranking_item_similarity (`bool`):
            The ranking head's query also holds the prompt's item tokens through the key projection,
            and its LLM terms start at zero: training starts from item-to-item similarity.
        ranking_item_prior (`bool`):
            The ranking head adds a score of each item read from its own tokens (zero at init): how
            likely any user is to pick it, which a cosine of normalised vectors cannot express.
        ranking_loss_weight (`float`):
            Weight of the ranking loss next to the answer (next-token) loss.
        text_decoder_bos_token_id (`int`):
            Q-Former vocabulary id that replaces [CLS] for item-grounded generation (BLIP-2's [DEC]).
    """

    model_type = "ilm"
    sub_configs_defaults = {
        "qformer_config": SubConfigSpec(
            config_class=Blip2QFormerConfig,
            init_kwargs={
                "hidden_size": 384,
                "num_hidden_layers": 6,
                "num_attention_heads": 12,
                "intermediate_size": 1536,
                "encoder_hidden_size": 384,
                "use_qformer_text_input": True,
            },
        ),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    qformer_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    num_query_tokens: int = 8
    cf_dim: int = 64
    num_cf_tokens: int = 4
    cf_residual: bool = False
    cf_scale: float | None = None
    num_items: int = 0
    num_users: int = 0
    adapter_type: str = "qformer"
    mlp_hidden_size: int = 1024
    item_token: str = ITEM_TOKEN
    user_token: str = USER_TOKEN
    item_token_id: int | None = None
    user_token_id: int | None = None
    text_model_name_or_path: str | None = None
    stores_language_model: bool = True
    lora_config: dict | None = None
    contrastive_dim: int = 256
    phase1_loss_weights: dict | None = None
    ranking_head: bool = False
    ranking_dim: int = 256
    ranking_item_similarity: bool = True
    ranking_item_prior: bool = False
    ranking_loss_weight: float = 1.0
    text_decoder_bos_token_id: int = 2  # "[unused1]" in BERT vocabularies
    text_pooling: str = "mean"
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.adapter_type not in ADAPTER_TYPES:
            raise ValueError(f"adapter_type={self.adapter_type!r}; use one of {ADAPTER_TYPES}.")
        if self.text_pooling not in ("mean", "cls"):
            raise ValueError(f"text_pooling={self.text_pooling!r}; use 'mean' or 'cls'.")
        if self.num_query_tokens < 1 or self.num_cf_tokens < 1:
            raise ValueError("num_query_tokens and num_cf_tokens must be >= 1.")
        if self.cf_residual and self.num_cf_tokens != self.num_query_tokens:
            raise ValueError(
                f"cf_residual adds CF token i to query output i: set num_cf_tokens={self.num_cf_tokens} equal to "
                f"num_query_tokens={self.num_query_tokens}, or cf_residual=False."
            )
        if self.cf_scale is not None and (isinstance(self.cf_scale, bool) or not (isinstance(self.cf_scale, (int, float)) and self.cf_scale > 0)):
            raise ValueError(
                f"cf_scale={self.cf_scale!r}: give a positive number (e.g. the RMS of the CF table; from_components takes "
                '"table" for it), or None to layer-normalise CF vectors.'
            )
        weights = {"itc": 1.0, "itm": 1.0, "itg": 1.0, "item_item": 0.0, "user_item": 0.0}
        unknown = set(self.phase1_loss_weights or {}) - set(PHASE1_LOSSES)
        if unknown:
            raise ValueError(f"Unknown phase-1 losses {sorted(unknown)}; known: {PHASE1_LOSSES}.")
        weights.update(self.phase1_loss_weights or {})
        self.phase1_loss_weights = weights
        self.auto_map = {**REMOTE_AUTO_MAP, **(getattr(self, "auto_map", None) or {})}
        self.custom_pipelines = {**REMOTE_PIPELINES, **(getattr(self, "custom_pipelines", None) or {})}
        # The CF tokens are what the queries cross-attend to.
        self.qformer_config.encoder_hidden_size = self.qformer_config.hidden_size
        self.qformer_config.use_qformer_text_input = True


__all__ = ["ILMConfig"]
