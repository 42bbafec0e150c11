"""Item-Language Model (ILM, arXiv 2406.02844): a BLIP-2 Q-Former reads collaborative-filtering (CF)
embeddings of items and users and turns them into "item tokens" for a frozen causal LM.

The layout follows transformers' BLIP-2 and LLaVA: the Q-Former layers are transformers' own
`Blip2QFormerModel`; item tokens replace placeholder tokens in the LLM's input embeddings with
`masked_scatter`; the item encoder runs only at the prefill step of `generate()`.
"""

import copy
import itertools
import math
import os
from dataclasses import dataclass

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutputWithPast
from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerModel, Blip2TextEmbeddings
from transformers.utils import ModelOutput, cached_file, logging

from .configuration_ilm import ILMConfig
from .pipeline_ilm import ILMPipeline  # noqa: F401  (named by config.custom_pipelines: saved folders carry it)

logger = logging.get_logger(__name__)

# Q-Former attention patterns (see `ILMQFormerEncoder.forward`).
ENCODER_MODES = ("query", "text", "multimodal", "causal")
# Inputs that only the prefill step of generation needs: later steps read the KV cache.
ENTITY_INPUTS = ("item_ids", "user_ids", "item_embeds", "user_embeds", "item_tokens", "user_tokens")
# A BERT-family config's fields that shape the Q-Former initialised from it.
QFORMER_FROM_BERT = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "hidden_act", "max_position_embeddings", "layer_norm_eps", "pad_token_id",
)
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


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

    def queries(self, answer: torch.Tensor, users: torch.Tensor, items: torch.Tensor, item_inputs: torch.Tensor) -> torch.Tensor:
        """Each `(batch, llm_hidden)`: the answer position's state, the mean state over the user
        tokens and over the item tokens, and the mean of the item tokens themselves as the LLM
        reads them (zeros where a prompt has none)."""
        parts = {"answer": answer, "user": users, "item": items}
        dtype = self.logit_scale.dtype
        query = sum(self.query[name](value.to(dtype)) for name, value in parts.items())
        if self.item_similarity:
            query = query + self.key(item_inputs.to(dtype))
        return nn.functional.normalize(query, dim=-1)

    def forward(self, queries: torch.Tensor, item_tokens: torch.Tensor) -> torch.Tensor:
        """queries `(batch, ranking_dim)` from `queries()`; item_tokens `(num_items, Q, llm_hidden)`
        shared by every row, or `(batch, num_items, Q, llm_hidden)` per row. Returns `(batch, num_items)`."""
        keys = nn.functional.normalize(self.key(item_tokens.to(self.logit_scale.dtype).mean(-2)), dim=-1)
        scores = queries @ keys.t() if keys.ndim == 2 else torch.einsum("bd,bnd->bn", queries, keys)
        return self.logit_scale.clamp(max=math.log(100.0)).exp() * scores


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
        # CF factors come at any scale (ALS: ~0.03): standardise them before they meet learned weights
        self.cf_input_norm = nn.LayerNorm(config.cf_dim)
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
    """Item encoder + adapter + frozen causal LM. Only the encoder and adapter have gradients."""

    def __init__(self, config: ILMConfig, language_model: PreTrainedModel | None = None):
        super().__init__(config)
        self._build_item_encoder(config)
        llm_hidden = config.text_config.hidden_size
        if config.adapter_type == "qformer":
            self.adapter = nn.Linear(config.qformer_config.hidden_size, llm_hidden)
        else:  # CoLLM-style: one MLP from the CF vector to all item tokens
            self.adapter = nn.Sequential(
                nn.LayerNorm(config.cf_dim),
                nn.Linear(config.cf_dim, config.mlp_hidden_size),
                nn.GELU(),
                nn.Linear(config.mlp_hidden_size, config.num_query_tokens * llm_hidden),
            )
        self.item_scorer = ILMItemScorer(config) if config.ranking_head else None
        self.language_model = language_model or AutoModelForCausalLM.from_config(config.text_config)
        if config.lora_config:
            self.language_model = _with_lora(self.language_model, config.lora_config)
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
        self.language_model = _with_lora(self.language_model, lora_config)
        self.freeze_language_model()

    def enable_ranking_head(self, ranking_dim: int | None = None, ranking_loss_weight: float | None = None, item_similarity: bool | None = None):
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
        self.item_scorer = ILMItemScorer(self.config).to(self.device)
        self.item_scorer.apply(self._init_weights)

    def train(self, mode: bool = True):
        super().train(mode)
        self.language_model.eval()  # frozen means no dropout either
        return self

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    # --- item and user tokens -------------------------------------------------------------------

    def encode_cf(self, cf_embeds: torch.Tensor, is_user: bool = False) -> torch.Tensor:
        """CF vectors `(N, cf_dim)` -> LLM-space tokens `(N, num_query_tokens, llm_hidden)`."""
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
        return self.encode_cf(self.cf_vectors("user", user_ids, user_embeds), is_user=True).to(self.language_model.dtype)

    def _entity_tokens(self, kind, input_ids, ids, embeds, tokens):
        """Tokens for every `<kind>` placeholder of the batch, in row-major order, or None."""
        token_id = getattr(self.config, f"{kind}_token_id")
        given = [name for name, value in ((f"{kind}_ids", ids), (f"{kind}_embeds", embeds), (f"{kind}_tokens", tokens)) if value is not None]
        if len(given) > 1:
            raise ValueError(f"Pass only one of {given}.")
        placeholders = (input_ids == token_id).sum(-1) if token_id is not None else torch.zeros_like(input_ids[:, 0])
        if not given:
            if placeholders.any():
                raise ValueError(
                    f"The input has {int(placeholders.sum())} {kind} placeholder tokens but no `{kind}_ids`, "
                    f"`{kind}_embeds` or `{kind}_tokens` were given."
                )
            return None
        queries = self.config.num_query_tokens
        if (placeholders % queries).any():
            raise ValueError(
                f"Each {getattr(self.config, f'{kind}_token')} must be expanded to {queries} placeholder tokens "
                "(ILMProcessor does this); found counts per row that are not a multiple of it: "
                f"{placeholders.tolist()}."
            )
        per_row = placeholders // queries
        value = ids if ids is not None else embeds if embeds is not None else tokens
        if not torch.is_tensor(value):
            raise TypeError(f"{given[0]} must be a torch tensor (ILMProcessor returns one), got {type(value).__name__}.")
        if ids is not None and (ids.dtype.is_floating_point or ids.dtype == torch.bool):
            raise TypeError(f"{kind}_ids must hold integer CF-table rows, got dtype {ids.dtype}.")
        hidden = self.config.text_config.hidden_size
        if tokens is not None and tuple(tokens.shape[-2:]) != (queries, hidden):
            raise ValueError(f"{kind}_tokens has shape {tuple(tokens.shape)}; each entity needs ({queries}, {hidden}) (get_{kind}_tokens gives them).")
        if value.ndim == (1 if ids is not None else 2 if embeds is not None else 3):
            value = value.unsqueeze(0)  # one unbatched row
        if value.shape[0] != input_ids.shape[0]:
            raise ValueError(f"{given[0]} has {value.shape[0]} rows but input_ids has {input_ids.shape[0]}.")
        slots = torch.arange(value.shape[1], device=value.device)[None, :]
        valid = slots < per_row.to(value.device)[:, None]
        if ids is not None:
            given_per_row = (value >= 0).sum(-1)  # -1 pads rows with fewer entities
            if not torch.equal(given_per_row.cpu(), per_row.cpu()) or not torch.equal((value >= 0), valid):
                raise ValueError(
                    f"{kind} placeholders per row {per_row.tolist()} do not match the {kind}_ids given per row "
                    f"{given_per_row.tolist()} (pad with -1 at the end of a row)."
                )
        elif value.shape[1] < int(per_row.max()):
            raise ValueError(f"{given[0]} has {value.shape[1]} slots per row but a row has {int(per_row.max())} placeholders.")
        selected = value[valid]
        if ids is not None:
            return self.get_item_tokens(item_ids=selected) if kind == "item" else self.get_user_tokens(user_ids=selected)
        if embeds is not None:
            return self.get_item_tokens(item_embeds=selected) if kind == "item" else self.get_user_tokens(user_embeds=selected)
        return selected

    # --- forward and generation -----------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
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
            placeholder = torch.zeros_like(input_ids, dtype=torch.bool)
            for token_id in (self.config.item_token_id, self.config.user_token_id):
                if token_id is not None:
                    placeholder |= input_ids == token_id
            # Placeholder ids may lie outside the LLM vocabulary: look up a real id, then overwrite.
            inputs_embeds = self.get_input_embeddings()(input_ids.masked_fill(placeholder, 0))
            new_item_tokens = self._entity_tokens("item", input_ids, item_ids, item_embeds, item_tokens)
            new_user_tokens = self._entity_tokens("user", input_ids, user_ids, user_embeds, user_tokens)
            for kind, tokens in (("item", new_item_tokens), ("user", new_user_tokens)):
                if tokens is not None:
                    mask = (input_ids == getattr(self.config, f"{kind}_token_id")).unsqueeze(-1)
                    inputs_embeds = inputs_embeds.masked_scatter(mask.to(inputs_embeds.device), tokens.to(inputs_embeds.dtype))
            if labels is not None:
                labels = labels.masked_fill(placeholder.to(labels.device), -100)
        elif any(v is not None for v in (item_ids, user_ids, item_embeds, user_embeds, item_tokens, user_tokens)):
            raise ValueError("With `inputs_embeds`, scatter item tokens yourself; item/user inputs need `input_ids`.")

        rank = any(v is not None for v in (rank_labels, rank_item_ids, rank_item_tokens))
        if rank and self.item_scorer is None:
            raise ValueError("rank_* inputs need the ranking head: build with ranking_head=True or call enable_ranking_head().")
        want_hidden = kwargs.pop("output_hidden_states", False)
        outputs = dict(self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            labels=labels,
            logits_to_keep=logits_to_keep,
            output_hidden_states=want_hidden or rank,
            **kwargs,
        ))
        if rank:
            outputs.update(self._rank(outputs["hidden_states"][-1], inputs_embeds, input_ids, attention_mask, labels, rank_labels, rank_item_ids, rank_item_tokens))
            if not want_hidden:
                outputs.pop("hidden_states")
            if outputs.get("loss_rank") is not None:
                outputs["loss_lm"] = outputs.get("loss")
                weighted = self.config.ranking_loss_weight * outputs["loss_rank"]
                outputs["loss"] = weighted if outputs["loss_lm"] is None else outputs["loss_lm"] + weighted
        return ILMCausalLMOutputWithPast(**outputs, item_tokens=new_item_tokens, user_tokens=new_user_tokens)

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
        model_inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        if not is_first_iteration and kwargs.get("use_cache", True):
            for key in ENTITY_INPUTS:  # already in the KV cache
                model_inputs.pop(key, None)
        return model_inputs

    # --- building, saving and loading -----------------------------------------------------------

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

        `item_token_id`/`user_token_id` come from the processor's tokenizer
        (`ILMProcessor.from_components` adds the placeholder tokens).
        """
        from transformers import AutoConfig, AutoModel, Blip2QFormerConfig

        llm_kwargs = {"dtype": torch.float32, **(llm_kwargs or {})}
        llm = AutoModelForCausalLM.from_pretrained(text_model_name_or_path, **llm_kwargs)
        if getattr(llm, "hf_quantizer", None) is not None:  # e.g. GGUF: we keep the dequantized weights
            llm = dequantized_copy(llm)
        qformer_config = config_kwargs.pop("qformer_config", None)
        bert = None
        if qformer_name_or_path is not None:
            bert_config = AutoConfig.from_pretrained(qformer_name_or_path)
            qformer_config = Blip2QFormerConfig(**{**{key: getattr(bert_config, key) for key in QFORMER_FROM_BERT}, **(qformer_config or {})})
            bert = AutoModel.from_pretrained(qformer_name_or_path, dtype=torch.float32)
        if item_embeddings is not None:
            config_kwargs.setdefault("cf_dim", item_embeddings.shape[1])
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

    def load_adapter(self, adapter_path: str, adapter_name: str = "default", **kwargs):
        """Loads a PEFT (LoRA) adapter of the frozen LLM, e.g. the `llm_adapter/` folder that a LoRA
        model's `save_pretrained` writes, or one trained on the base LLM alone (`PeftModel`
        conventions: adapter_config.json + adapter_model.safetensors, path or Hub id). An adapter
        that does not fit this LLM raises, naming the adapter."""
        from peft import PeftConfig, PeftModel

        adapter_config = PeftConfig.from_pretrained(adapter_path, **kwargs)
        try:
            if isinstance(self.language_model, PeftModel):
                self.language_model.load_adapter(adapter_path, adapter_name=adapter_name, **kwargs)
                self.language_model.set_adapter(adapter_name)
            else:
                self.language_model = PeftModel.from_pretrained(self.language_model, adapter_path, adapter_name=adapter_name, **kwargs)
        except (RuntimeError, ValueError, KeyError) as err:
            raise ValueError(
                f"The adapter at {adapter_path} (for {adapter_config.base_model_name_or_path}) does not fit this model's LLM "
                f"({self.config.text_model_name_or_path}): {err}"
            ) from err
        if not self.config.lora_config:  # saved and reloaded with the model from now on
            fields = adapter_config.to_dict()
            self.config.lora_config = {k: sorted(v) if isinstance(v, (set, list)) else v for k, v in fields.items() if k in LORA_CONFIG_KEYS}
        self.freeze_language_model()

    def save_pretrained(self, save_directory, *args, include_language_model: bool = True, **kwargs):
        """`include_language_model=False` writes a light folder: trained weights only, and the
        frozen LLM's Hub id or path (`config.text_model_name_or_path`) to reload it from.

        With LoRA on the LLM, `llm_adapter/` also holds it as a standard PEFT adapter of the base LLM
        (`PeftModel.from_pretrained(llm, dir + "/llm_adapter")`, or `load_adapter` of another ILM)."""
        if self.config.lora_config and kwargs.get("is_main_process", True):
            self.language_model.save_pretrained(os.path.join(save_directory, LLM_ADAPTER_FOLDER))
        if include_language_model:
            return super().save_pretrained(save_directory, *args, **kwargs)
        if not self.config.text_model_name_or_path:
            raise ValueError("A light save needs `config.text_model_name_or_path` (the frozen LLM's Hub id or path).")
        # LoRA weights are trained weights: they stay in a light folder
        state_dict = {k: v for k, v in self.state_dict().items() if not k.startswith("language_model.") or "lora_" in k}
        self.config.stores_language_model = False
        try:
            return super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)
        finally:
            self.config.stores_language_model = True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        config = kwargs.pop("config", None)
        if not isinstance(config, ILMConfig):
            hub = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
            config = ILMConfig.from_pretrained(pretrained_model_name_or_path, **hub)
        try:
            if not config.stores_language_model:
                return cls._from_light_checkpoint(pretrained_model_name_or_path, config, **kwargs)
            model = super().from_pretrained(pretrained_model_name_or_path, *args, config=config, **kwargs)
        except SafetensorError as err:  # its own message names no file
            raise OSError(
                f"The weights of {pretrained_model_name_or_path} cannot be read ({err}): the safetensors file is "
                "truncated or corrupt. Save the model again, or download it again (force_download=True)."
            ) from err
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            # Memory-mapped safetensors can leave weights unaligned, and CPU kernels then round
            # differently: copy those, so a reloaded model gives bit-identical logits.
            if tensor.data_ptr() % 64:
                tensor.data = tensor.data.clone()
        model.freeze_language_model()  # loading re-creates parameters with gradients on
        return model

    @classmethod
    def _from_light_checkpoint(cls, path, config, **kwargs):
        """Loads trained weights from `path` and the frozen LLM from `config.text_model_name_or_path`.

        Also takes a phase-1 (item encoder pretraining) checkpoint: its adapter starts fresh. Takes the
        Hub arguments, `dtype`, `attn_implementation` and a single-device `device_map` ("cpu", "cuda:0");
        any other `from_pretrained` argument is refused by name rather than ignored.
        """
        from safetensors.torch import load_file

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
        hub = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
        dtype = kwargs.get("dtype")
        dtype = torch.float32 if dtype in (None, "auto") else getattr(torch, dtype) if isinstance(dtype, str) else dtype
        llm_name = kwargs.get("text_model_name_or_path", config.text_model_name_or_path)
        if not llm_name:
            raise ValueError(f"{path} holds no LLM weights and its config names no `text_model_name_or_path`.")
        # where to find the LLM (revision/subfolder address the ILM repository, not the LLM's)
        llm_hub = {k: hub[k] for k in ("cache_dir", "force_download", "local_files_only", "token") if k in hub}
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
        return model.to(dtype).to(torch.device(device) if device is not None else model.device).eval()


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


def _process_group():
    """torch.distributed when several processes train together, else None."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


class _GatherRows(torch.autograd.Function):
    """Every process's rows in rank order (any number per process); the backward hands each process
    the gradient of its own rows summed over every process's loss. torch's functional all_gather
    expects equal sizes and mishandles non-contiguous gradients (a transposed similarity's), hence this."""

    @staticmethod
    def forward(ctx, local, sizes):
        dist = _process_group()
        padded = local.new_zeros((max(sizes), *local.shape[1:]))
        padded[: len(local)] = local
        chunks = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(chunks, padded)
        rank = dist.get_rank()
        ctx.start, ctx.size = sum(sizes[:rank]), sizes[rank]
        return torch.cat([chunk[:size] for chunk, size in zip(chunks, sizes)])

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        _process_group().all_reduce(grad)
        return grad[ctx.start : ctx.start + ctx.size], None


def gather_rows(*local: torch.Tensor) -> tuple[list[torch.Tensor], int, float]:
    """([rows of every process, per tensor], this process's offset in them, its share of the mean).

    The tensors hold one row per local example (same count). Contrastive losses compare local rows
    against every process's; a loss summed over the local rows and divided by the share averages,
    over DDP's gradient mean, to the single-process mean over all rows, however unevenly the rows are
    spread. One process: `(list(local), 0, len(rows))`.
    """
    rows = len(local[0])
    dist = _process_group()
    if dist is None:
        return list(local), 0, float(rows)
    count = torch.tensor([rows], device=local[0].device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    gathered = [_GatherRows.apply(tensor.contiguous(), sizes) for tensor in local]
    return gathered, sum(sizes[: dist.get_rank()]), sum(sizes) / len(sizes)


def pool_queries(query_feats: torch.Tensor) -> torch.Tensor:
    """`(N, num_query_tokens, dim)` normalised per-query features -> one normalised vector per row."""
    return nn.functional.normalize(query_feats.mean(1), dim=-1)


def info_nce(logits: torch.Tensor, key_ids: torch.Tensor, offset: int = 0, share: float | None = None) -> torch.Tensor:
    """In-batch InfoNCE: row i's positive is key `offset + i`. Other keys with the positive's id
    are duplicates of it, not negatives, and are masked out. The mean over rows, or their sum
    divided by `share` (see `gather_rows`)."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    targets = rows + offset
    duplicate = key_ids[None, :] == key_ids[targets][:, None]
    duplicate[rows, targets] = False
    loss = nn.functional.cross_entropy(logits.masked_fill(duplicate, torch.finfo(logits.dtype).min), targets, reduction="sum")
    return loss / (logits.shape[0] if share is None else share)


def sample_hard_negatives(similarity: torch.Tensor, same: torch.Tensor, generator=None) -> torch.Tensor:
    """For each row, one column drawn in proportion to softmax(similarity), never a column marked
    `same` (the positive itself or a duplicate of it). Rows with no valid column get -1."""
    weights = similarity.float().softmax(-1).masked_fill(same, 0.0)
    usable = weights.sum(-1) > 0
    picks = torch.full((similarity.shape[0],), -1, dtype=torch.long, device=similarity.device)
    if usable.any():
        picks[usable] = torch.multinomial(weights[usable], 1, generator=generator).squeeze(-1)
    return picks


class ILMForItemTextPretraining(ILMPreTrainedModel):
    """Phase 1: the Q-Former item encoder learns from item texts and interactions (no LLM involved).

    Losses (BLIP-2 stage 1 with items for images, plus ILM's interaction losses):
    ITC item-text contrastive, ITM item-text matching with hard negatives, ITG item-grounded text
    generation, item-item contrastive (items consumed together), user-item contrastive (a user's CF
    vector through the same encoder vs an item they liked). Weights in `config.phase1_loss_weights`.
    Saves as a light checkpoint that `ILMForConditionalGeneration.from_pretrained` loads directly.
    """

    def __init__(self, config: ILMConfig):
        super().__init__(config)
        if config.adapter_type != "qformer":
            raise ValueError("Phase-1 pretraining trains the Q-Former; adapter_type='mlp' has none to pretrain.")
        config.stores_language_model = False
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
        so the checkpoint loads straight into `ILMForConditionalGeneration`."""
        from transformers import AutoConfig, AutoModel

        bert = AutoModel.from_pretrained(qformer_name_or_path, dtype=torch.float32)
        qformer_config = {key: getattr(bert.config, key) for key in QFORMER_FROM_BERT}
        qformer_config.update(config_kwargs.pop("qformer_config", None) or {})
        if item_embeddings is not None:
            config_kwargs.setdefault("cf_dim", item_embeddings.shape[1])
        config = ILMConfig(
            qformer_config=qformer_config,
            text_config=AutoConfig.from_pretrained(text_model_name_or_path),
            text_model_name_or_path=str(text_model_name_or_path),
            **config_kwargs,
        )
        model = cls(config)
        model.item_encoder.load_bert_weights(bert.state_dict())
        model.set_cf_embeddings(item_embeddings, user_embeddings)
        return model

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
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
        text_hidden = hidden[:, self.config.num_query_tokens :]
        # the LM head shares the Q-Former's word embeddings, as BERT's does
        logits = nn.functional.linear(self.itg_transform(text_hidden), self.item_encoder.embeddings.word_embeddings.weight, self.itg_bias)
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)

    def itm_loss(self, cf, input_ids, attention_mask, all_ids, offset, sim_i2t, sim_t2i):
        """BLIP-2's item-text matching (ITM): each item with its own text (a match), with a hard negative text, and each text
        with a hard negative item. Negatives come from every process's batch (as in BLIP-2), drawn in
        proportion to ITC similarity (`sim_i2t` / `sim_t2i`: local rows against all), never the positive
        or a duplicate of it (the same item id or the same text)."""
        width, group = torch.tensor(input_ids.shape[1], device=input_ids.device), _process_group()
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


LLM_ADAPTER_FOLDER = "llm_adapter"
LORA_CONFIG_KEYS = ("r", "lora_alpha", "lora_dropout", "target_modules", "bias", "use_rslora", "use_dora")


def _with_lora(language_model, lora_config: dict):
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


__all__ = ["ILMPreTrainedModel", "ILMForConditionalGeneration", "ILMForItemTextPretraining", "ILMPretrainingOutput", "ILMQFormerEncoder", "ILMCFEmbeddings", "ILMItemScorer", "dequantized_copy"]
