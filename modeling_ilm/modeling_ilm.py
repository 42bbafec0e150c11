"""Item-Language Model (ILM, arXiv 2406.02844): a BLIP-2 Q-Former reads collaborative-filtering (CF)
embeddings of items and users and turns them into "item tokens" for a frozen causal LM.

The layout follows transformers' BLIP-2 and LLaVA: the Q-Former layers are transformers' own
`Blip2QFormerModel`; item tokens replace placeholder tokens in the LLM's input embeddings with
`masked_scatter`; the item encoder runs only at the prefill step of `generate()`.
"""

import copy
import math
from dataclasses import dataclass

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import AutoModelForCausalLM, Cache, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutputWithPast
from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerModel, Blip2TextEmbeddings
from transformers.utils import ModelOutput, logging

from .configuration_ilm import ILMConfig
from .contrastive_ilm import gather_rows, info_nce, pool_queries, process_group, sample_hard_negatives
from .loading_ilm import (
    aligned,
    build_generation_model,
    build_pretraining_model,
    hub_kwargs,
    load_light_checkpoint,
    load_llm_adapter,
    save_llm_adapter,
    trained_state_dict,
    unreadable_weights,
    with_lora,
)
from .pipeline_ilm import ILMPipeline  # noqa: F401  (named by config.custom_pipelines: saved folders carry it)

logger = logging.get_logger(__name__)

# Q-Former attention patterns (see `ILMQFormerEncoder.forward`).
ENCODER_MODES = ("query", "text", "multimodal", "causal")
# Inputs that only the prefill step of generation needs: later steps read the KV cache.
ENTITY_INPUTS = ("item_ids", "user_ids", "item_embeds", "user_embeds", "item_tokens", "user_tokens")


@dataclass
class ILMCausalLMOutputWithPast(CausalLMOutputWithPast):
    r"""
    item_tokens (`torch.FloatTensor` of shape `(num_items, num_query_tokens, llm_hidden_size)`, *optional*):
        The LLM-space tokens of the items in the input (in order of appearance), when any were encoded.
    user_tokens (`torch.FloatTensor`, *optional*):
        The same for users.
    rank_logits (`torch.FloatTensor` of shape `(batch_size, num_ranked_items)`, *optional*):
        The ranking head's score of each ranked item for each row (`config.ranking_head`).
    loss_lm / loss_rank (`torch.FloatTensor`, *optional*):
        The answer (next-token) loss and the ranking loss; `loss` is their weighted sum.
    """

    item_tokens: torch.FloatTensor | None = None
    user_tokens: torch.FloatTensor | None = None
    rank_logits: torch.FloatTensor | None = None
    loss_lm: torch.FloatTensor | None = None
    loss_rank: torch.FloatTensor | None = None


def float32_region(device: torch.device):
    """Autocast off (as transformers' rotary embeddings do): under bfloat16 autocast the item encoder
    and the ranking head still compute in float32, since what the head ranks by are small
    differences between items that bfloat16 rounds away (validation HR@1 of the head at phase 2's
    step 0: 0.280 under autocast, 0.335 in float32)."""
    return torch.autocast(device_type=torch.device(device).type, enabled=False)


class ILMItemScorer(nn.Module):
    """The ranking head: the cosine of a query and an item's key, times a learned scale.

    The query reads the frozen LLM's last hidden states: where the answer starts, and pooled over
    the prompt's user tokens and over its item tokens (the LLM's contextual view of who asks and
    what they consumed; the answer position alone barely varies between users of one template).
    The key reads an item's tokens, the same ones the LLM reads, so the head ranks any item the
    encoder can encode (the whole catalog in one forward) and its gradient trains the encoder too.

    With `config.ranking_item_similarity`, the query also holds the prompt's own item tokens through
    the key projection, and the LLM terms start at zero: at step 0 the head ranks by similarity to
    the consumed items (item-to-item, which carries most of the CF signal) and training adds what the
    LLM reads from the context. Without it, the CPU preset's 120 steps left the head at popularity's level.
    """

    def __init__(self, config: ILMConfig):
        super().__init__()
        llm_hidden, dim = config.text_config.hidden_size, config.ranking_dim
        self.query = nn.ModuleDict({
            part: nn.Sequential(nn.LayerNorm(llm_hidden), nn.Linear(llm_hidden, dim)) for part in ("answer", "user", "item")
        })
        self.key = nn.Sequential(nn.LayerNorm(llm_hidden), nn.Linear(llm_hidden, dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.item_similarity = config.ranking_item_similarity
        # cosines cannot say that some items are picked more than others: a score per item, from its tokens
        self.prior = nn.Sequential(nn.LayerNorm(llm_hidden), nn.Linear(llm_hidden, 1)) if config.ranking_item_prior else None

    def queries(self, answer: torch.Tensor | None, users: torch.Tensor | None, items: torch.Tensor | None, item_inputs: torch.Tensor) -> torch.Tensor:
        """Each `(batch, llm_hidden)`: the answer position's state, the mean state over the user
        tokens and over the item tokens, and the mean of the item tokens themselves as the LLM
        reads them (zeros where a prompt has none). The LLM states None: the query's item part
        alone (with `item_similarity`), what training on interactions without the LLM ranks by."""
        parts = {"answer": answer, "user": users, "item": items}
        dtype = self.logit_scale.dtype
        with float32_region(item_inputs.device):
            query = sum(self.query[name](value.to(dtype)) for name, value in parts.items() if value is not None)
            if self.item_similarity:
                query = query + self.key(item_inputs.to(dtype))
            return nn.functional.normalize(query, dim=-1)

    def forward(self, queries: torch.Tensor, item_tokens: torch.Tensor) -> torch.Tensor:
        """queries `(batch, ranking_dim)` from `queries()`; item_tokens `(num_items, Q, llm_hidden)`
        shared by every row, or `(batch, num_items, Q, llm_hidden)` per row. Returns `(batch, num_items)`."""
        with float32_region(queries.device):
            items = item_tokens.to(self.logit_scale.dtype).mean(-2)
            keys = nn.functional.normalize(self.key(items), dim=-1)
            scores = queries @ keys.t() if keys.ndim == 2 else torch.einsum("bd,bnd->bn", queries, keys)
            scores = self.logit_scale.clamp(max=math.log(100.0)).exp() * scores
            return scores if self.prior is None else scores + self.prior(items).squeeze(-1)


class ILMCFScale(nn.Module):
    """Divides CF vectors by one number for the whole table (`config.cf_scale`), keeping each one's length."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, cf_embeds: torch.Tensor) -> torch.Tensor:
        return cf_embeds / self.scale


def cf_input_norm(config: ILMConfig) -> nn.Module:
    """CF factors come at any scale (ALS: ~0.03): standardise them before they meet learned weights,
    per vector (LayerNorm, which drops the length) or by `config.cf_scale` (which keeps it)."""
    return nn.LayerNorm(config.cf_dim) if config.cf_scale is None else ILMCFScale(config.cf_scale)


class ILMCFEmbeddings(nn.Module):
    """The frozen CF tables: callers pass item/user ids, or raw CF vectors for entities outside them."""

    def __init__(self, config: ILMConfig):
        super().__init__()
        self.items = nn.Embedding(max(config.num_items, 1), config.cf_dim)
        self.users = nn.Embedding(max(config.num_users, 1), config.cf_dim)
        self.num_items, self.num_users = config.num_items, config.num_users
        self.requires_grad_(False)

    def lookup(self, ids: torch.LongTensor, kind: str) -> torch.Tensor:
        table, size = (self.items, self.num_items) if kind == "item" else (self.users, self.num_users)
        if size == 0:
            raise ValueError(f"This model has no {kind} CF table; pass raw vectors as `{kind}_embeds` instead.")
        if ids.numel() and (ids.min() < 0 or ids.max() >= size):
            bad = ids[(ids < 0) | (ids >= size)][0].item()
            raise ValueError(
                f"{kind} index {bad} is outside the CF table (0..{size - 1}). Map external ids with "
                f"ILMProcessor, or pass raw CF vectors as `{kind}_embeds`."
            )
        return table(ids)


class ILMQFormerEncoder(nn.Module):
    """BLIP-2 Q-Former whose "image" is a CF embedding.

    The CF vector is projected to a few key/value tokens; learned queries cross-attend to them
    and share self-attention with text tokens (BERT vocabulary), as in BLIP-2 stage 1.
    """

    def __init__(self, config: ILMConfig):
        super().__init__()
        qformer_config = config.qformer_config
        hidden = qformer_config.hidden_size
        self.num_cf_tokens = config.num_cf_tokens
        self.cf_residual = config.cf_residual
        self.cf_input_norm = cf_input_norm(config)
        self.cf_projection = nn.Linear(config.cf_dim, config.num_cf_tokens * hidden)
        self.cf_layernorm = nn.LayerNorm(hidden, eps=qformer_config.layer_norm_eps)
        # Users go through the same encoder as "special items"; this tells the two apart.
        self.cf_type_embeddings = nn.Embedding(2, hidden)
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, hidden))
        self.embeddings = Blip2TextEmbeddings(qformer_config)
        self.qformer = Blip2QFormerModel._from_config(qformer_config)

    def cf_tokens(self, cf_embeds: torch.Tensor, is_user: bool = False) -> torch.Tensor:
        batch = cf_embeds.shape[0]
        cf_embeds = self.cf_input_norm(cf_embeds.to(self.cf_projection.weight.dtype))
        tokens = self.cf_projection(cf_embeds).view(batch, self.num_cf_tokens, -1)
        tokens = tokens + self.cf_type_embeddings.weight[int(is_user)]
        return self.cf_layernorm(tokens)

    def forward(
        self,
        cf_embeds: torch.Tensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        mode: str = "query",
        is_user: bool = False,
    ) -> BaseModelOutput:
        """Runs the Q-Former in one of BLIP-2's attention patterns.

        - `query`: queries only, cross-attending to the CF tokens (item features, phase 2 input).
        - `text`: text only, the unimodal text encoder (ITC text side).
        - `multimodal`: queries and text attend to each other (ITM).
        - `causal`: text decoded after the queries; queries never see text, text sees all
          queries and earlier text (ITG).
        Returns the hidden states of `[queries; text]` (queries first, absent in `text` mode); with
        `config.cf_residual`, query i's output plus CF token i.
        """
        if mode not in ENCODER_MODES:
            raise ValueError(f"mode={mode!r}; use one of {ENCODER_MODES}.")
        use_queries, use_text = mode != "text", mode != "query"
        if use_queries and cf_embeds is None:
            raise ValueError(f"mode={mode!r} needs `cf_embeds`.")
        if use_text and input_ids is None:
            raise ValueError(f"mode={mode!r} needs text `input_ids`.")

        batch = (cf_embeds if use_queries else input_ids).shape[0]
        query_embeds = self.query_tokens.expand(batch, -1, -1) if use_queries else None
        hidden = self.embeddings(input_ids=input_ids if use_text else None, query_embeds=query_embeds)
        num_queries = query_embeds.shape[1] if use_queries else 0
        mask = self.attention_mask(hidden, num_queries, attention_mask if use_text else None, causal=mode == "causal")
        cf_tokens = self.cf_tokens(cf_embeds, is_user) if use_queries else None
        outputs = self.qformer(query_embeds=hidden, query_length=num_queries, attention_mask=mask, encoder_hidden_states=cf_tokens)
        states = outputs.last_hidden_state
        if self.cf_residual and use_queries:
            states = torch.cat([states[:, :num_queries] + cf_tokens, states[:, num_queries:]], 1)
        return BaseModelOutput(last_hidden_state=states)

    @staticmethod
    def attention_mask(hidden, num_queries, text_mask, causal):
        """Additive 4D mask over `[queries; text]` (0 = attend, dtype-min = blocked)."""
        batch, length = hidden.shape[:2]
        allowed = torch.ones(batch, length, length, dtype=torch.bool, device=hidden.device)
        if text_mask is not None:  # padded text keys are never attended to
            keys = torch.cat([torch.ones(batch, num_queries, device=hidden.device), text_mask.to(hidden.device)], 1)
            allowed &= keys.bool()[:, None, :]
        if causal:
            num_text = length - num_queries
            allowed[:, :num_queries, num_queries:] = False
            allowed[:, num_queries:, num_queries:] &= torch.tril(
                torch.ones(num_text, num_text, dtype=torch.bool, device=hidden.device)
            )
        mask = torch.zeros(allowed.shape, dtype=hidden.dtype, device=hidden.device)
        return mask.masked_fill(~allowed, torch.finfo(hidden.dtype).min)[:, None]

    def load_bert_weights(self, bert_state_dict: dict) -> list[str]:
        """Initialise text embeddings, self-attention and both FFNs from a BERT-family encoder.

        BLIP-2 does the same: the query FFN starts as a copy of the text FFN; cross-attention,
        queries and the CF projection start fresh. Returns the Q-Former keys left untouched.
        """
        sd = {k.removeprefix("bert."): v for k, v in bert_state_dict.items()}
        # BERT adds token-type 0 to every position: fold it in so the text encoder starts exact.
        position = sd["embeddings.position_embeddings.weight"]
        if "embeddings.token_type_embeddings.weight" in sd:
            position = position + sd["embeddings.token_type_embeddings.weight"][0]
        mapped = {
            "embeddings.word_embeddings.weight": sd["embeddings.word_embeddings.weight"],
            "embeddings.position_embeddings.weight": position,
            "qformer.layernorm.weight": sd["embeddings.LayerNorm.weight"],
            "qformer.layernorm.bias": sd["embeddings.LayerNorm.bias"],
        }
        bert_to_qformer = {
            "attention.self.": ["attention.attention."],
            "attention.output.": ["attention.output."],
            "intermediate.": ["intermediate.", "intermediate_query."],
            "output.": ["output.", "output_query."],
        }
        for key, value in sd.items():
            if not key.startswith("encoder.layer."):
                continue
            layer, rest = key.removeprefix("encoder.layer.").split(".", 1)
            if int(layer) >= len(self.qformer.encoder.layer):
                continue
            for bert_prefix, targets in bert_to_qformer.items():
                if rest.startswith(bert_prefix):
                    for target in targets:
                        mapped[f"qformer.encoder.layer.{layer}.{target}{rest.removeprefix(bert_prefix)}"] = value
                    break
        own = self.state_dict()
        for key, value in mapped.items():
            if key not in own or own[key].shape != value.shape:
                raise ValueError(
                    f"Q-Former init: {key} has shape {tuple(value.shape)} in the BERT checkpoint but "
                    f"{tuple(own[key].shape) if key in own else 'no such weight'} here; make qformer_config "
                    "match the BERT config (hidden size, vocab, positions)."
                )
        self.load_state_dict(mapped, strict=False)
        return sorted(set(own) - set(mapped))


class ILMPreTrainedModel(PreTrainedModel):
    config: ILMConfig
    config_class = ILMConfig
    base_model_prefix = "ilm"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _no_split_modules = ["Blip2QFormerLayer"]
    # from_pretrained(dtype=torch.bfloat16 / float16) casts the frozen LLM only: the item encoder and the
    # ranking head (~1% of the weights) rank by small score differences that half precision rounds away
    _keep_in_fp32_modules_strict = ["cf_embeddings", "item_encoder", "adapter", "item_scorer"]

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, ILMQFormerEncoder):
            init.normal_(module.query_tokens, mean=0.0, std=self.config.initializer_range)
        elif isinstance(module, Blip2TextEmbeddings):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
        elif isinstance(module, ILMItemScorer):
            init.constant_(module.logit_scale, math.log(1 / 0.07))
            if module.item_similarity:  # start as item-to-item similarity; the LLM terms grow from zero
                for part in module.query.values():
                    init.zeros_(part[1].weight)
                    init.zeros_(part[1].bias)
            if module.prior is not None:  # no item preferred until the ranking loss says so
                init.zeros_(module.prior[1].weight)
                init.zeros_(module.prior[1].bias)

    def _build_item_encoder(self, config: ILMConfig):
        self.cf_embeddings = ILMCFEmbeddings(config)
        self.item_encoder = ILMQFormerEncoder(config) if config.adapter_type == "qformer" else None

    def set_cf_embeddings(self, item_embeddings: torch.Tensor | None = None, user_embeddings=None):
        """Installs (frozen) CF tables, e.g. the ALS factors, resizing them and the config."""
        for kind, table in (("item", item_embeddings), ("user", user_embeddings)):
            if table is None:
                continue
            table = torch.as_tensor(table, dtype=torch.float32)
            if table.ndim != 2 or table.shape[1] != self.config.cf_dim:
                raise ValueError(f"{kind} CF table has shape {tuple(table.shape)}; expected (N, cf_dim={self.config.cf_dim}).")
            if not torch.isfinite(table).all():
                raise ValueError(f"{kind} CF table holds NaN or inf values (rows {torch.nonzero(~torch.isfinite(table).all(-1)).flatten()[:5].tolist()}); retrain the CF embeddings.")
            embedding = nn.Embedding.from_pretrained(table.to(self.device), freeze=True)
            setattr(self.cf_embeddings, f"{kind}s", embedding)
            setattr(self.cf_embeddings, f"num_{kind}s", table.shape[0])
            setattr(self.config, f"num_{kind}s", table.shape[0])

    def cf_vectors(self, kind: str, ids=None, embeds=None) -> torch.Tensor:
        if (ids is None) == (embeds is None):
            raise ValueError(f"Pass exactly one of `{kind}_ids` (table rows) or `{kind}_embeds` (raw CF vectors).")
        if embeds is not None:
            if embeds.ndim != 2 or embeds.shape[-1] != self.config.cf_dim:
                raise ValueError(f"{kind}_embeds has shape {tuple(embeds.shape)}; expected (N, {self.config.cf_dim}).")
            if not torch.isfinite(embeds).all():
                raise ValueError(f"{kind}_embeds holds NaN or inf values.")
            return embeds.to(self.device)
        return self.cf_embeddings.lookup(torch.as_tensor(ids, device=self.device).long(), kind)


class ILMForConditionalGeneration(ILMPreTrainedModel, GenerationMixin):
    """Item encoder + adapter + frozen causal LM. Only the encoder and adapter have gradients.

    Each `<item>` / `<user>` in a prompt becomes `num_query_tokens` placeholder tokens (the
    processor expands them), which `forward` fills with the item tokens that the Q-Former (or the
    MLP adapter) makes from the entity's CF embedding; a prompt without placeholders reaches the LLM
    unchanged. With `config.ranking_head`, `score_items` also ranks catalog items for a prompt.

    Example:

    ```python
    >>> from transformers import AutoModel, AutoProcessor

    >>> model = AutoModel.from_pretrained("runs/ml100k/model", trust_remote_code=True)
    >>> processor = AutoProcessor.from_pretrained("runs/ml100k/model", trust_remote_code=True)
    >>> chat = [{"role": "user", "content": "I liked <item> and <item>. What should I watch next?"}]
    >>> inputs = processor(messages=chat, item_ids=["50", "181"])  # catalog ids, one per <item>
    >>> output = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    >>> answer = processor.decode(output[0, inputs["input_ids"].shape[1] :])
    >>> item_id = processor.match_item(answer)  # the catalog item it names, or None
    >>> scores = model.score_items(**inputs)  # (1, num_items), with a ranking head
    >>> top = [processor.catalog["items"][row]["title"] for row in scores[0].topk(5).indices.tolist()]
    ```
    """

    save_language_model = True  # what save_pretrained does by default (see there)

    def __init__(self, config: ILMConfig, language_model: PreTrainedModel | None = None):
        """`language_model`: the frozen causal LM (built from `config.text_config` with random weights
        when None, as `from_pretrained` does before loading); `from_components` builds from pretrained parts."""
        super().__init__(config)
        self._build_item_encoder(config)
        llm_hidden = config.text_config.hidden_size
        if config.adapter_type == "qformer":
            self.adapter = nn.Linear(config.qformer_config.hidden_size, llm_hidden)
        else:  # CoLLM-style: one MLP from the CF vector to all item tokens
            self.adapter = nn.Sequential(
                cf_input_norm(config),
                nn.Linear(config.cf_dim, config.mlp_hidden_size),
                nn.GELU(),
                nn.Linear(config.mlp_hidden_size, config.num_query_tokens * llm_hidden),
            )
        self.item_scorer = ILMItemScorer(config) if config.ranking_head else None
        self.language_model = language_model or AutoModelForCausalLM.from_config(config.text_config)
        if config.lora_config:
            self.language_model = with_lora(self.language_model, config.lora_config)
        self.post_init()
        self.freeze_language_model()

    def freeze_language_model(self):
        """The LLM (but for its LoRA weights, when enabled) and the CF tables never train."""
        for name, param in self.language_model.named_parameters():
            param.requires_grad = "lora_" in name
        self.cf_embeddings.requires_grad_(False)

    def enable_lora(self, **lora_config):
        """Adds LoRA to the LLM (an option; ILM keeps the LLM frozen). Saved and loaded with the model."""
        if self.config.lora_config:
            raise ValueError("LoRA is already enabled on this model.")
        self.config.lora_config = lora_config
        self.language_model = with_lora(self.language_model, lora_config)
        self.freeze_language_model()

    def enable_ranking_head(
        self, ranking_dim: int | None = None, ranking_loss_weight: float | None = None, item_similarity: bool | None = None, item_prior: bool | None = None
    ):
        """Adds the ranking head (`config.ranking_head`) to a model built without it, e.g. one
        loaded from a phase-1 checkpoint. Saved and loaded with the model."""
        if self.item_scorer is not None:
            raise ValueError("This model already has a ranking head.")
        self.config.ranking_head = True
        self.config.ranking_dim = ranking_dim or self.config.ranking_dim
        if ranking_loss_weight is not None:
            self.config.ranking_loss_weight = ranking_loss_weight
        if item_similarity is not None:
            self.config.ranking_item_similarity = item_similarity
        if item_prior is not None:
            self.config.ranking_item_prior = item_prior
        self.item_scorer = ILMItemScorer(self.config).to(self.device)
        self.item_scorer.apply(self._init_weights)

    def train(self, mode: bool = True):
        """As `nn.Module.train`, but the frozen LLM always stays in eval mode."""
        super().train(mode)
        self.language_model.eval()  # frozen means no dropout either
        return self

    def get_input_embeddings(self):
        """The LLM's token embeddings (placeholder positions are overwritten by item tokens in `forward`)."""
        return self.language_model.get_input_embeddings()

    def get_output_embeddings(self):
        """The LLM's LM head."""
        return self.language_model.get_output_embeddings()

    # --- item and user tokens -------------------------------------------------------------------

    def encode_cf(self, cf_embeds: torch.Tensor, is_user: bool = False) -> torch.Tensor:
        """CF vectors `(N, cf_dim)` -> LLM-space tokens `(N, num_query_tokens, llm_hidden)`."""
        with float32_region(cf_embeds.device):
            if self.item_encoder is None:
                tokens = self.adapter(cf_embeds.to(self.adapter[1].weight.dtype))
                return tokens.view(cf_embeds.shape[0], self.config.num_query_tokens, -1)
            query_output = self.item_encoder(cf_embeds, mode="query", is_user=is_user).last_hidden_state
            return self.adapter(query_output)

    def get_item_tokens(self, item_ids=None, item_embeds=None) -> torch.Tensor:
        """Item tokens `(N, num_query_tokens, llm_hidden)` from table ids or raw CF vectors.

        Precompute the catalog once (`get_item_tokens(torch.arange(config.num_items))`) and pass
        slices as `item_tokens=` to make generation cost what the bare LLM costs.
        """
        return self.encode_cf(self.cf_vectors("item", item_ids, item_embeds)).to(self.language_model.dtype)

    def get_user_tokens(self, user_ids=None, user_embeds=None) -> torch.Tensor:
        """User tokens `(N, num_query_tokens, llm_hidden)` from table ids `(N,)` or raw CF vectors `(N, cf_dim)`."""
        return self.encode_cf(self.cf_vectors("user", user_ids, user_embeds), is_user=True).to(self.language_model.dtype)

    def get_placeholder_mask(self, input_ids: torch.LongTensor, kind: str = "item") -> torch.BoolTensor:
        """`(batch_size, sequence_length)`: True where `input_ids` holds a `<kind>` placeholder token
        (`kind`: "item" or "user"; each entity has `num_query_tokens` of them, in a run)."""
        token_id = getattr(self.config, f"{kind}_token_id")
        return input_ids == token_id if token_id is not None else torch.zeros_like(input_ids, dtype=torch.bool)

    def get_placeholder_tokens(self, kind: str, placeholder_mask: torch.BoolTensor, ids=None, embeds=None, tokens=None) -> torch.Tensor | None:
        """The tokens that fill `placeholder_mask` (`get_placeholder_mask`), `(num_entities,
        num_query_tokens, llm_hidden)` in row-major order, from exactly one of `ids` (CF-table rows,
        `(batch_size, max_entities)`, -1 pads), `embeds` (`(batch_size, max_entities, cf_dim)`) or
        `tokens` (`(batch_size, max_entities, num_query_tokens, llm_hidden)`); one unbatched row may
        drop the batch dimension. None when none is given and the input has no such placeholders."""
        given = [(name, value) for name, value in (("ids", ids), ("embeds", embeds), ("tokens", tokens)) if value is not None]
        if len(given) > 1:
            raise ValueError(f"Pass only one of {[f'{kind}_{name}' for name, _ in given]}.")
        counts = placeholder_mask.sum(-1).tolist()  # the one host sync of the checks below
        if not given:
            if any(counts):
                raise ValueError(
                    f"The input has {sum(counts)} {kind} placeholder tokens but no `{kind}_ids`, "
                    f"`{kind}_embeds` or `{kind}_tokens` were given."
                )
            return None
        queries = self.config.num_query_tokens
        if any(count % queries for count in counts):
            raise ValueError(
                f"Each {getattr(self.config, f'{kind}_token')} must be expanded to {queries} placeholder tokens "
                f"(ILMProcessor does this); found counts per row that are not a multiple of it: {counts}."
            )
        name, value = given[0]
        selected = self._entities_in_rows(kind, name, value, [count // queries for count in counts])
        if name == "tokens":
            return selected
        get_tokens = self.get_item_tokens if kind == "item" else self.get_user_tokens
        return get_tokens(**{f"{kind}_{name}": selected})

    def _entities_in_rows(self, kind: str, what: str, value, per_row: list) -> torch.Tensor:
        """The entries of `value` (`what`: "ids", "embeds" or "tokens" per row) that `per_row` placeholders use, row-major."""
        name = f"{kind}_{what}"  # the argument's name, for the errors
        if not torch.is_tensor(value):
            raise TypeError(f"{name} must be a torch tensor (ILMProcessor returns one), got {type(value).__name__}.")
        if what == "ids" and (value.dtype.is_floating_point or value.dtype == torch.bool):
            raise TypeError(f"{name} must hold integer CF-table rows, got dtype {value.dtype}.")
        queries, hidden = self.config.num_query_tokens, self.config.text_config.hidden_size
        if what == "tokens" and tuple(value.shape[-2:]) != (queries, hidden):
            raise ValueError(f"{name} has shape {tuple(value.shape)}; each entity needs ({queries}, {hidden}) (get_{kind}_tokens gives them).")
        if value.ndim == {"ids": 1, "embeds": 2, "tokens": 3}[what]:
            value = value.unsqueeze(0)  # one unbatched row
        if value.shape[0] != len(per_row):
            raise ValueError(f"{name} has {value.shape[0]} rows but input_ids has {len(per_row)}.")
        valid = torch.arange(value.shape[1], device=value.device)[None, :] < torch.tensor(per_row, device=value.device)[:, None]
        if what != "ids" and value.shape[1] < max(per_row):
            raise ValueError(f"{name} has {value.shape[1]} slots per row but a row has {max(per_row)} placeholders.")
        if what == "ids" and (value.shape[1] < max(per_row) or not torch.equal(value >= 0, valid)):  # -1 pads rows, at their end
            raise ValueError(
                f"{kind} placeholders per row {per_row} do not match the {name} given per row "
                f"{(value >= 0).sum(-1).tolist()} (pad with -1 at the end of a row)."
            )
        return value[valid]

    # --- forward and generation -----------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        item_ids: torch.LongTensor | None = None,
        user_ids: torch.LongTensor | None = None,
        item_embeds: torch.FloatTensor | None = None,
        user_embeds: torch.FloatTensor | None = None,
        item_tokens: torch.FloatTensor | None = None,
        user_tokens: torch.FloatTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        rank_labels: torch.LongTensor | None = None,
        rank_item_ids: torch.LongTensor | None = None,
        rank_item_tokens: torch.FloatTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> ILMCausalLMOutputWithPast:
        r"""
        item_ids / user_ids (`torch.LongTensor` of shape `(batch_size, max_entities)`):
            CF-table rows of the items/users each row's placeholders stand for, in order; pad with -1.
        item_embeds / user_embeds (`(batch_size, max_entities, cf_dim)`):
            Raw CF vectors instead of table rows (entities outside the tables).
        item_tokens / user_tokens (`(batch_size, max_entities, num_query_tokens, llm_hidden)`):
            Precomputed tokens from `get_item_tokens` / `get_user_tokens`.
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
            Next-token targets; -100 is ignored, and placeholder positions are always ignored.
        rank_labels (`torch.LongTensor` of shape `(batch_size,)` or `(batch_size, sequence_length)`, *optional*):
            CF-table row of the item each row should recommend (-100: none); trains the ranking head
            with a softmax over the ranked items. Each must be among `rank_item_ids`. Token-level
            labels mark every position whose prompt prefix should predict an item (then
            `rank_logits` has one row per labelled position, in row-major order).
        rank_item_ids (`torch.LongTensor` of shape `(num_items,)` or `(batch_size, num_items)`, *optional*):
            The items the ranking head scores (default: the whole catalog), shared or per row.
        rank_item_tokens (`(num_items, Q, llm_hidden)` or `(batch_size, num_items, Q, llm_hidden)`, *optional*):
            Their precomputed tokens instead (`get_item_tokens`).
        logits_to_keep (`int` or `torch.LongTensor` of shape `(num_columns,)`):
            As the language model takes it (the last n positions, or these columns; 0: all). With
            `labels`, the loss is taken from the kept logits (each predicting the label after it), and
            every labelled position must be predicted by one: see `answer_positions`.
        position_ids, cache: as the language model takes them; a `Cache` from an earlier call continues
            it (item tokens already in it are not given again), e.g. a prompt prefix reused by `generate`.
        The ranking head reads the LLM's last hidden state where the answer starts: before the first
        label when `labels` are given, else at the last attended position (the generation prompt).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        if input_ids is not None and (not torch.is_tensor(input_ids) or input_ids.dtype.is_floating_point or input_ids.ndim != 2 or not input_ids.numel()):
            raise TypeError(
                "input_ids must be a non-empty 2-D integer tensor (batch, length), as ILMProcessor(..., return_tensors='pt') "
                f"returns; got {type(input_ids).__name__}{'' if not torch.is_tensor(input_ids) else f' {input_ids.dtype} of shape {tuple(input_ids.shape)}'}."
            )
        new_item_tokens = new_user_tokens = None
        if inputs_embeds is None:
            item_mask, user_mask = self.get_placeholder_mask(input_ids, "item"), self.get_placeholder_mask(input_ids, "user")
            placeholder = item_mask | user_mask
            # Placeholder ids may lie outside the LLM vocabulary: look up a real id, then overwrite.
            inputs_embeds = self.get_input_embeddings()(input_ids.masked_fill(placeholder, 0))
            new_item_tokens = self.get_placeholder_tokens("item", item_mask, item_ids, item_embeds, item_tokens)
            new_user_tokens = self.get_placeholder_tokens("user", user_mask, user_ids, user_embeds, user_tokens)
            for mask, tokens in ((item_mask, new_item_tokens), (user_mask, new_user_tokens)):
                if tokens is not None:
                    inputs_embeds = inputs_embeds.masked_scatter(mask.unsqueeze(-1).to(inputs_embeds.device), tokens.to(inputs_embeds.dtype))
            if labels is not None:
                labels = labels.masked_fill(placeholder.to(labels.device), -100)
        elif any(v is not None for v in (item_ids, user_ids, item_embeds, user_embeds, item_tokens, user_tokens)):
            raise ValueError("With `inputs_embeds`, scatter item tokens yourself; item/user inputs need `input_ids`.")

        rank = any(v is not None for v in (rank_labels, rank_item_ids, rank_item_tokens))
        if rank and self.item_scorer is None:
            raise ValueError("rank_* inputs need the ranking head: build with ranking_head=True or call enable_ranking_head().")
        want_hidden = kwargs.pop("output_hidden_states", False)
        all_logits = isinstance(logits_to_keep, int) and logits_to_keep == 0
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            # the last n columns as indices rather than the LLM's strided slice: torch's matmul of a strided
            # 3-D input with a frozen LM head copies the head once per row (bfloat16 on CPU: 1.6 s instead
            # of 4 ms per prefill of 16 prompts; benchmarks/bench_lm_head.py)
            length = inputs_embeds.shape[1]
            logits_to_keep = torch.arange(max(length - logits_to_keep, 0), length, device=inputs_embeds.device)
        outputs = dict(self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            labels=labels if all_logits else None,
            logits_to_keep=logits_to_keep,
            output_hidden_states=want_hidden or rank,
            **kwargs,
        ))
        if labels is not None and not all_logits:
            outputs["loss"] = self._kept_logits_loss(outputs["logits"], labels, logits_to_keep, kwargs.get("num_items_in_batch"))
        if rank:
            outputs.update(self._rank(outputs["hidden_states"][-1], inputs_embeds, input_ids, attention_mask, labels, rank_labels, rank_item_ids, rank_item_tokens))
            if not want_hidden:
                outputs.pop("hidden_states")
            if outputs.get("loss_rank") is not None:
                outputs["loss_lm"] = outputs.get("loss")
                weighted = self.config.ranking_loss_weight * outputs["loss_rank"]
                outputs["loss"] = weighted if outputs["loss_lm"] is None else outputs["loss_lm"] + weighted
        return ILMCausalLMOutputWithPast(**outputs, item_tokens=new_item_tokens, user_tokens=new_user_tokens)

    @staticmethod
    def answer_positions(labels: torch.Tensor) -> torch.Tensor:
        """The columns whose logits predict a label in some row (column t predicts `labels[:, t + 1]`):
        `model(**batch, logits_to_keep=ILMForConditionalGeneration.answer_positions(batch["labels"]))`
        gives the same loss as full logits, with the LM head run on the answers only."""
        return labels[:, 1:].ne(-100).any(0).nonzero().squeeze(-1)

    def _kept_logits_loss(self, logits, labels, logits_to_keep, num_items_in_batch=None):
        """The LM loss when only some positions' logits were computed: each kept position predicts
        the label after it. The LM head over a whole prompt costs about a fifth of a small LLM's
        forward, and only the answer positions carry labels."""
        next_labels = nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
        columns = torch.as_tensor(logits_to_keep, device=labels.device)
        left_out = next_labels.clone()
        left_out[:, columns] = -100
        if left_out.ne(-100).any():
            raise ValueError(
                "logits_to_keep leaves out positions that predict labels, so their loss would be lost: keep every "
                "column t whose labels[:, t + 1] is set (`ILMForConditionalGeneration.answer_positions(labels)`), or pass logits_to_keep=0."
            )
        kept = next_labels[:, columns]
        if not kept.ne(-100).any():  # no answer token (e.g. a batch of ranking-only rows): no LM loss, not a mean over nothing
            return None
        return self.language_model.loss_function(
            logits=logits, labels=None, shift_labels=kept, vocab_size=logits.shape[-1], num_items_in_batch=num_items_in_batch
        )

    def _rank(self, hidden, inputs_embeds, input_ids, attention_mask, labels, rank_labels, rank_item_ids, rank_item_tokens) -> dict:
        """Ranking-head scores (and loss, with `rank_labels`).

        Per row (`rank_labels` absent or `(batch,)`), the query is read where the answer starts.
        With token-level `rank_labels` `(batch, seq_len)` (as `labels` are for the LM), every labelled
        position is a query over the prompt up to it: e.g. the end of each history item predicting
        the next one (SASRec-style), so one forward yields many ranking examples.
        """
        batch, length = hidden.shape[:2]
        device = hidden.device
        token_level = rank_labels is not None and rank_labels.ndim == 2
        if token_level:
            rows, cols = (rank_labels.to(device) != -100).nonzero(as_tuple=True)
            targets = rank_labels.to(device)[rows, cols]
        else:
            cols = torch.full((batch,), length - 1, dtype=torch.long, device=device)
            if attention_mask is not None:  # the last attended token, for left or right padding
                cols = (attention_mask.to(device).long() * torch.arange(length, device=device)).argmax(-1)
            if labels is not None:
                answered = labels.to(device) != -100
                first = answered.long().argmax(-1) - 1
                cols = torch.where(answered.any(-1) & (first >= 0), first, cols)
            rows, targets = torch.arange(batch, device=device), None if rank_labels is None else rank_labels.to(device)
        masks = {}  # where the user / item tokens are
        for kind, token_id in (("user", self.config.user_token_id), ("item", self.config.item_token_id)):
            masks[kind] = torch.zeros(batch, length, 1, dtype=hidden.dtype, device=device)
            if input_ids is not None and token_id is not None:
                masks[kind] = (input_ids.to(device) == token_id).unsqueeze(-1).to(hidden.dtype)

        def prefix_mean(states, mask):  # mean of `states` over the masked positions up to each query position
            # float32: a bf16 running count is exact only up to 256 positions
            mask = mask.float()
            sums, counts = (states.to(device, torch.float32) * mask).cumsum(1), mask.cumsum(1)
            return (sums[rows, cols] / counts[rows, cols].clamp(min=1)).to(hidden.dtype)

        query = self.item_scorer.queries(
            hidden[rows, cols], prefix_mean(hidden, masks["user"]), prefix_mean(hidden, masks["item"]), prefix_mean(inputs_embeds, masks["item"])
        )
        if rank_item_tokens is None:
            if rank_item_ids is None:
                rank_item_ids = torch.arange(self.config.num_items, device=self.device)
            rank_item_ids = torch.as_tensor(rank_item_ids, device=self.device).long()
            rank_item_tokens = self.get_item_tokens(item_ids=rank_item_ids.flatten()).unflatten(0, rank_item_ids.shape)
        per_row = rank_item_tokens.ndim == 4
        logits = self.item_scorer(query, rank_item_tokens[rows] if per_row and token_level else rank_item_tokens)
        if targets is None:
            return {"rank_logits": logits}
        if rank_item_ids is None:
            raise ValueError("rank_labels are catalog rows: pass `rank_item_ids` with `rank_item_tokens`.")
        ids = rank_item_ids[rows] if rank_item_ids.ndim == 2 else rank_item_ids.expand(len(rows), -1)
        match = ids == targets[:, None]
        has = targets != -100
        if not match[has].any(-1).all():
            raise ValueError("Every rank_label must be one of the rank_item_ids of its row.")
        if not has.any():
            return {"rank_logits": logits, "loss_rank": query.sum() * 0.0}  # keeps every rank in step under DDP
        loss = nn.functional.cross_entropy(logits[has], match[has].float().argmax(-1))
        return {"rank_logits": logits, "loss_rank": loss}

    def score_items(self, input_ids, attention_mask=None, item_ids=None, candidate_ids=None, candidate_tokens=None, **entity_inputs) -> torch.Tensor:
        """Ranking-head scores `(batch_size, num_candidates)` for the prompts in `input_ids`
        (ending with the generation prompt, as for `generate`).

        candidate_ids: CF-table rows `(num_candidates,)` shared by every row or `(batch_size,
        num_candidates)` per row; None scores the whole catalog. candidate_tokens: their
        precomputed `get_item_tokens` instead. Other arguments as in `forward`.
        """
        if self.item_scorer is None:
            raise ValueError("This model has no ranking head (config.ranking_head=False): rank by answer likelihood instead.")
        if candidate_ids is None and candidate_tokens is None:
            candidate_ids = torch.arange(self.config.num_items, device=self.device)
        return self(
            input_ids=input_ids, attention_mask=attention_mask, item_ids=item_ids,
            rank_item_ids=candidate_ids, rank_item_tokens=candidate_tokens, logits_to_keep=1, **entity_inputs,
        ).rank_logits

    def prepare_inputs_for_generation(self, *args, is_first_iteration=False, **kwargs):
        """As the LLM's, plus the item/user inputs at the prefill step only: later steps read their
        tokens from the KV cache, so the item encoder runs once per `generate` call."""
        model_inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        if not is_first_iteration and kwargs.get("use_cache", True):
            for key in ENTITY_INPUTS:  # already in the KV cache
                model_inputs.pop(key, None)
        return model_inputs

    # --- building, saving and loading (the machinery lives in loading_ilm.py) ---------------------

    @classmethod
    def from_components(
        cls,
        text_model_name_or_path: str,
        qformer_name_or_path: str | None = None,
        *,
        llm_kwargs: dict | None = None,
        item_embeddings: torch.Tensor | None = None,
        user_embeddings: torch.Tensor | None = None,
        item_token_id: int | None = None,
        user_token_id: int | None = None,
        **config_kwargs,
    ) -> "ILMForConditionalGeneration":
        """Builds a fresh ILM from a causal LM and a BERT-family encoder (Hub ids or local paths).

        `text_model_name_or_path`: the frozen LLM (loaded in float32 unless `llm_kwargs` says
        otherwise; a GGUF file, `llm_kwargs={"gguf_file": ...}`, is dequantised). `qformer_name_or_path`:
        the encoder whose weights and shape initialise the Q-Former (None: random, shaped by
        `qformer_config`). `item_embeddings` / `user_embeddings`: `(num_items, cf_dim)` /
        `(num_users, cf_dim)` CF tables. `item_token_id` / `user_token_id` come from the processor's
        tokenizer (`ILMProcessor.from_components` adds the placeholder tokens). Other keyword
        arguments are `ILMConfig` fields; `cf_scale="table"` takes the RMS of the item table's entries.
        """
        return build_generation_model(
            cls, text_model_name_or_path, qformer_name_or_path, llm_kwargs=llm_kwargs, item_embeddings=item_embeddings,
            user_embeddings=user_embeddings, item_token_id=item_token_id, user_token_id=user_token_id, **config_kwargs,
        )

    def load_adapter(self, adapter_path: str, adapter_name: str = "default", **kwargs):
        """Loads a PEFT (LoRA) adapter of the frozen LLM, e.g. the `llm_adapter/` folder that a LoRA
        model's `save_pretrained` writes, or one trained on the base LLM alone (`PeftModel`
        conventions: adapter_config.json + adapter_model.safetensors, path or Hub id). An adapter
        that does not fit this LLM raises, naming the adapter."""
        load_llm_adapter(self, adapter_path, adapter_name, **kwargs)

    def save_pretrained(self, save_directory, *args, include_language_model: bool | None = None, **kwargs):
        """`include_language_model=False` writes a light folder: trained weights only, and the
        frozen LLM's Hub id or path (`config.text_model_name_or_path`) to reload it from. None uses
        `self.save_language_model` (True; phase 2 sets it False, so Trainer's checkpoints are light).

        With LoRA on the LLM, `llm_adapter/` also holds it as a standard PEFT adapter of the base LLM
        (`PeftModel.from_pretrained(llm, dir + "/llm_adapter")`, or `load_adapter` of another ILM)."""
        if self.config.lora_config and kwargs.get("is_main_process", True):
            save_llm_adapter(self, save_directory)
        if self.save_language_model if include_language_model is None else include_language_model:
            return super().save_pretrained(save_directory, *args, **kwargs)
        state_dict = trained_state_dict(self, kwargs.pop("state_dict", None))
        self.config.stores_language_model = False  # what the saved config says; this model still holds its LLM
        try:
            return super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)
        finally:
            self.config.stores_language_model = True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' `from_pretrained`; a light folder (`config.stores_language_model=False`, as
        phase 1 and `save_pretrained(..., include_language_model=False)` write) loads its frozen LLM from
        `config.text_model_name_or_path` (or the `text_model_name_or_path=` given), see
        `loading_ilm.load_light_checkpoint` for the arguments it takes."""
        config = kwargs.pop("config", None)
        if not isinstance(config, ILMConfig):
            config = ILMConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs(kwargs))
        try:
            if not config.stores_language_model:
                return load_light_checkpoint(cls, pretrained_model_name_or_path, config, **kwargs)
            model = super().from_pretrained(pretrained_model_name_or_path, *args, config=config, **kwargs)
        except SafetensorError as err:
            raise unreadable_weights(pretrained_model_name_or_path, err) from err
        model.freeze_language_model()  # loading re-creates parameters with gradients on
        return aligned(model)


@dataclass
class ILMPretrainingOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor`): the weighted sum of the enabled phase-1 losses.
    loss_itc / loss_itm / loss_itg / loss_item_item / loss_user_item (`torch.FloatTensor`):
        Each loss on its own (None where switched off or not computable for this batch).
    """

    loss: torch.FloatTensor | None = None
    loss_itc: torch.FloatTensor | None = None
    loss_itm: torch.FloatTensor | None = None
    loss_itg: torch.FloatTensor | None = None
    loss_item_item: torch.FloatTensor | None = None
    loss_user_item: torch.FloatTensor | None = None


class ILMForItemTextPretraining(ILMPreTrainedModel):
    """Phase 1: the Q-Former item encoder learns from item texts and interactions (no LLM involved).

    Losses (BLIP-2 stage 1 with items for images, plus ILM's interaction losses):
    ITC item-text contrastive, ITM item-text matching with hard negatives, ITG item-grounded text
    generation, item-item contrastive (items consumed together), user-item contrastive (a user's CF
    vector through the same encoder vs an item they liked). Weights in `config.phase1_loss_weights`.
    Saves as a light checkpoint that `ILMForConditionalGeneration.from_pretrained` loads directly.
    """

    def __init__(self, config: ILMConfig):
        """Q-Former, CF tables and the phase-1 heads; no LLM (only its config, so the checkpoint loads
        into `ILMForConditionalGeneration`). `from_components` initialises the Q-Former from BERT."""
        if config.adapter_type != "qformer":
            raise ValueError("Phase-1 pretraining trains the Q-Former; adapter_type='mlp' has none to pretrain.")
        if config.stores_language_model:  # its checkpoints never hold the LLM; the caller's config stays as given
            config = copy.deepcopy(config)
            config.stores_language_model = False
        super().__init__(config)
        self._build_item_encoder(config)
        hidden = config.qformer_config.hidden_size
        self.item_projection = nn.Linear(hidden, config.contrastive_dim)
        self.text_projection = nn.Linear(hidden, config.contrastive_dim)
        self.itm_head = nn.Linear(hidden, 2)
        self.itg_transform = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden, eps=config.qformer_config.layer_norm_eps))
        self.itg_bias = nn.Parameter(torch.zeros(config.qformer_config.vocab_size))
        self.temperature = nn.Parameter(torch.tensor(0.07))
        self.post_init()
        self.cf_embeddings.requires_grad_(False)

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, ILMForItemTextPretraining):
            init.constant_(module.temperature, 0.07)
            init.zeros_(module.itg_bias)

    @classmethod
    def from_components(cls, text_model_name_or_path, qformer_name_or_path, *, item_embeddings=None, user_embeddings=None, **config_kwargs):
        """A fresh phase-1 model: Q-Former from a BERT-family encoder, and the LLM named (config only)
        so the checkpoint loads straight into `ILMForConditionalGeneration`. `item_embeddings` /
        `user_embeddings`: `(N, cf_dim)` CF tables; other keyword arguments are `ILMConfig` fields
        (`cf_scale="table"`: the RMS of the item table's entries)."""
        return build_pretraining_model(
            cls, text_model_name_or_path, qformer_name_or_path, item_embeddings=item_embeddings, user_embeddings=user_embeddings, **config_kwargs
        )

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """transformers' `from_pretrained`, with the CF tables frozen again (loading re-creates them trainable)."""
        model = super().from_pretrained(*args, **kwargs)
        model.cf_embeddings.requires_grad_(False)
        return model

    # --- features --------------------------------------------------------------------------------

    def query_features(self, cf_embeds, is_user=False):
        """Normalised per-query features `(N, num_query_tokens, contrastive_dim)`."""
        queries = self.item_encoder(cf_embeds, mode="query", is_user=is_user).last_hidden_state
        return nn.functional.normalize(self.item_projection(queries), dim=-1)

    def pooled_features(self, cf_embeds, is_user=False):
        """One normalised vector per item/user (mean over queries): for item-item and user-item."""
        return pool_queries(self.query_features(cf_embeds, is_user))

    def text_features(self, input_ids, attention_mask):
        """Normalised text feature: the [CLS] state (BLIP-2) or the mean over tokens, the pooling
        sentence encoders such as all-MiniLM-L6-v2 were trained with (their [CLS] barely varies)."""
        text = self.item_encoder(input_ids=input_ids, attention_mask=attention_mask, mode="text").last_hidden_state
        if self.config.text_pooling == "cls":
            pooled = text[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(text.dtype)
            pooled = (text * mask).sum(1) / mask.sum(1).clamp(min=1)
        return nn.functional.normalize(self.text_projection(pooled), dim=-1)

    def item_text_similarity(self, query_feats, text_feats):
        """BLIP-2's ITC score: the best-matching query against the text [CLS] feature."""
        return torch.einsum("iqd,td->itq", query_feats, text_feats).max(-1).values

    # --- losses ----------------------------------------------------------------------------------

    def forward(
        self,
        item_ids=None,
        item_embeds=None,
        input_ids=None,
        attention_mask=None,
        partner_ids=None,
        user_ids=None,
        **kwargs,
    ) -> ILMPretrainingOutput:
        r"""
        item_ids (`(batch,)`) / item_embeds (`(batch, cf_dim)`): the anchor items.
        input_ids / attention_mask (`(batch, text_len)`): each item's text in the Q-Former's vocabulary.
        partner_ids (`(batch,)`): an item related to each anchor (consumed together), -1 where none.
        user_ids (`(batch,)`): a user who liked each anchor, -1 where none.
        """
        weights = self.config.phase1_loss_weights
        temperature = self.temperature.clamp(0.001, 0.5)
        cf = self.cf_vectors("item", item_ids, item_embeds)
        anchor_ids = item_ids.to(self.device) if item_ids is not None else torch.arange(cf.shape[0], device=self.device)
        losses = {}
        item_feats = self.query_features(cf)

        if weights["itc"] or weights["itm"]:
            text_feats = self.text_features(input_ids, attention_mask)
            (all_text, all_ids, all_items), offset, share = gather_rows(text_feats, anchor_ids, item_feats)
            sim_i2t = self.item_text_similarity(item_feats, all_text) / temperature
            sim_t2i = self.item_text_similarity(all_items, text_feats).t() / temperature
            if weights["itc"]:
                losses["itc"] = self.itc_loss(sim_i2t, sim_t2i, all_ids, offset, share)
            if weights["itm"]:
                losses["itm"] = self.itm_loss(cf, input_ids, attention_mask, all_ids, offset, sim_i2t.detach(), sim_t2i.detach())
        if weights["itg"]:
            losses["itg"] = self.itg_loss(cf, input_ids, attention_mask)
        if weights["item_item"] and partner_ids is not None:
            losses["item_item"] = self.item_item_loss(item_feats, anchor_ids, partner_ids.to(self.device), temperature)
        if weights["user_item"] and user_ids is not None:
            losses["user_item"] = self.user_item_loss(item_feats, anchor_ids, user_ids.to(self.device), temperature)
        losses = {name: value for name, value in losses.items() if value is not None}

        total = sum(weights[name] * value for name, value in losses.items())
        return ILMPretrainingOutput(loss=total if losses else None, **{f"loss_{name}": value for name, value in losses.items()})

    def itc_loss(self, sim_i2t, sim_t2i, all_ids, offset, share):
        """BLIP-2's item-text contrastive loss (ITC; the paper's "image" is the item's CF vector).

        Positives: each item and its own text. Negatives: every other text of the batch of all
        processes for an item (`sim_i2t`, local items against all texts), every other item for a text
        (`sim_t2i`); repeats of the same item are not negatives. Scores are the best-matching query
        against the text feature, over the learned temperature; symmetric InfoNCE. No label smoothing
        (LAVIS uses 0.1 against BLIP-2's noisy web captions; catalog texts are an item's own metadata)."""
        return (info_nce(sim_i2t, all_ids, offset, share) + info_nce(sim_t2i, all_ids, offset, share)) / 2

    def itg_loss(self, cf, input_ids, attention_mask):
        """BLIP-2's item-grounded text generation (ITG): next-token loss on the item's text, decoded
        after the queries (which never see the text), so the queries must carry what the text says."""
        decoder_ids = input_ids.clone()
        decoder_ids[:, 0] = self.config.text_decoder_bos_token_id  # BLIP-2's [DEC] in place of [CLS]
        hidden = self.item_encoder(cf, input_ids=decoder_ids, attention_mask=attention_mask, mode="causal").last_hidden_state
        # each text position predicts the next token; the head (over the whole vocabulary) runs only
        # where that token is real text, not padding: the same mean loss at a fraction of the cost
        predicts = attention_mask[:, 1:].bool()
        text_hidden = hidden[:, self.config.num_query_tokens : -1][predicts]
        # the LM head shares the Q-Former's word embeddings, as BERT's does
        logits = nn.functional.linear(self.itg_transform(text_hidden), self.item_encoder.embeddings.word_embeddings.weight, self.itg_bias)
        return nn.functional.cross_entropy(logits, input_ids[:, 1:][predicts])

    def itm_loss(self, cf, input_ids, attention_mask, all_ids, offset, sim_i2t, sim_t2i):
        """BLIP-2's item-text matching (ITM): each item with its own text (a match), with a hard negative text, and each text
        with a hard negative item. Negatives come from every process's batch (as in BLIP-2), drawn in
        proportion to ITC similarity (`sim_i2t` / `sim_t2i`: local rows against all), never the positive
        or a duplicate of it (the same item id or the same text)."""
        width, group = torch.tensor(input_ids.shape[1], device=input_ids.device), process_group()
        if group is not None:  # texts are padded per process: to the longest of all
            group.all_reduce(width, op=group.ReduceOp.MAX)
        pad = (0, int(width) - input_ids.shape[1])
        # the CF vectors are frozen: no gradient flows back through their gather
        (all_cf, all_text, all_mask), _, _ = gather_rows(cf, nn.functional.pad(input_ids, pad), nn.functional.pad(attention_mask, pad))
        rows = torch.arange(cf.shape[0], device=cf.device)
        local = rows + offset
        same = (all_ids[local][:, None] == all_ids[None, :]) | (all_text[local][:, None, :] == all_text[None, :, :]).all(-1)
        negative_text = sample_hard_negatives(sim_i2t, same)
        negative_item = sample_hard_negatives(sim_t2i, same)
        ok_text, ok_item = negative_text >= 0, negative_item >= 0
        item_cf = torch.cat([cf, cf[ok_text], all_cf[negative_item[ok_item]]])
        text_rows = torch.cat([local, negative_text[ok_text], local[ok_item]])
        labels = torch.cat([torch.ones_like(rows), torch.zeros(int(ok_text.sum() + ok_item.sum()), dtype=torch.long, device=cf.device)])
        hidden = self.item_encoder(item_cf, input_ids=all_text[text_rows], attention_mask=all_mask[text_rows], mode="multimodal").last_hidden_state
        logits = self.itm_head(hidden[:, : self.config.num_query_tokens]).mean(1)
        return nn.functional.cross_entropy(logits, labels)

    def item_item_loss(self, item_feats, anchor_ids, partner_ids, temperature):
        """ILM's item-item contrastive loss (the paper's addition to BLIP-2): two items consumed
        together by a user are a positive pair. Pulls each anchor item's pooled query feature towards
        its partner's and pushes it away from every other partner in the batch of all processes (and
        each partner away from the other anchors); repeats of an id are not negatives. Rows without a
        partner (-1) sit out; None when no process has one."""
        return self._interaction_loss(item_feats, anchor_ids, partner_ids, "item", temperature)

    def user_item_loss(self, item_feats, anchor_ids, user_ids, temperature):
        """ILM's user-item contrastive loss: a user (their CF vector, through the same encoder as a
        "special item") and an item they liked are a positive pair; other users and items of the batch
        of all processes are negatives, as in `item_item_loss`."""
        return self._interaction_loss(item_feats, anchor_ids, user_ids, "user", temperature)

    def _interaction_loss(self, item_feats, anchor_ids, other_ids, entity, temperature):
        has = other_ids >= 0
        anchors = pool_queries(item_feats[has])
        (all_anchors, all_anchor_ids), offset, share = gather_rows(anchors, anchor_ids[has])
        if share == 0:
            return None
        others = self.pooled_features(self.cf_vectors(entity, other_ids[has]), is_user=entity == "user")
        (all_others, all_other_ids), _, _ = gather_rows(others, other_ids[has])
        return (
            info_nce(anchors @ all_others.t() / temperature, all_other_ids, offset, share)
            + info_nce(others @ all_anchors.t() / temperature, all_anchor_ids, offset, share)
        ) / 2


__all__ = ["ILMPreTrainedModel", "ILMForConditionalGeneration", "ILMForItemTextPretraining", "ILMPretrainingOutput", "ILMQFormerEncoder", "ILMCFEmbeddings", "ILMItemScorer"]
