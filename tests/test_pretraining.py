"""Phase 1 (ILMForItemTextPretraining) on tiny random components."""

import pytest
import torch
import torch.distributed as dist

from modeling_ilm import ILMForConditionalGeneration, ILMForItemTextPretraining
from modeling_ilm.contrastive_ilm import info_nce, sample_hard_negatives

ALL_LOSSES = {"itc": 1.0, "itm": 1.0, "itg": 1.0, "item_item": 1.0, "user_item": 1.0}


def build(tiny_components, weights=ALL_LOSSES, seed=0):
    torch.manual_seed(seed)
    return ILMForItemTextPretraining.from_components(
        tiny_components["llm"],
        tiny_components["bert"],
        item_embeddings=torch.randn(12, 8),
        user_embeddings=torch.randn(5, 8),
        num_query_tokens=2,
        contrastive_dim=16,
        phase1_loss_weights=weights,
        # no dropout: a 32-wide model's early differences would drown in it
        qformer_config={"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
    )


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 99, (6, 7), generator=g)
    ids[:, 0] = 1  # [CLS]-like
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    return {
        "item_ids": torch.tensor([0, 1, 2, 3, 4, 5]),
        "input_ids": ids,
        "attention_mask": mask,
        "partner_ids": torch.tensor([6, 7, -1, 8, 9, 10]),
        "user_ids": torch.tensor([0, 1, 2, -1, 3, 4]),
    }


def overfit(model, steps, lr):
    """Trains on one fixed batch; returns each loss per step."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    history = []
    for _ in range(steps):
        out = model(**batch())
        history.append({k: getattr(out, f"loss_{k}") for k in ALL_LOSSES if getattr(out, f"loss_{k}") is not None})
        assert all(torch.isfinite(v) for v in history[-1].values())
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    return [{k: v.item() for k, v in step.items()} for step in history]


def test_every_loss_is_finite_and_decreases_when_overfitting(tiny_components):
    history = overfit(build(tiny_components), steps=60, lr=1e-3)
    assert set(history[0]) == set(ALL_LOSSES)
    for name in ("itc", "itg", "item_item", "user_item"):
        assert history[-1][name] < 0.7 * history[0][name], (name, history[0][name], history[-1][name])


def test_itm_loss_decreases_when_overfitting(tiny_components):
    """ITM is noisy (fresh hard negatives every step) and slow to start (the CF signal must first
    reach the queries): compare averages, over a longer run."""
    history = [step["itm"] for step in overfit(build(tiny_components, {"itc": 0.0, "itm": 1.0, "itg": 0.0}), steps=150, lr=3e-3)]
    first, last = sum(history[:5]) / 5, sum(history[-20:]) / 20
    assert last < 0.85 * first, (first, last)


def test_itg_is_the_mean_next_token_loss_over_real_text_tokens_only(tiny_components):
    model = build(tiny_components, weights={**ALL_LOSSES, "itc": 0.0, "itm": 0.0, "item_item": 0.0, "user_item": 0.0}).eval()
    inputs = {k: batch()[k] for k in ("item_ids", "input_ids", "attention_mask")}
    with torch.no_grad():
        whole = model(**inputs).loss_itg
        padded = model(  # 4 more padded columns holding random ids: nothing changes
            item_ids=inputs["item_ids"], input_ids=torch.cat([inputs["input_ids"], torch.randint(3, 99, (6, 4))], 1),
            attention_mask=torch.cat([inputs["attention_mask"], torch.zeros(6, 4, dtype=torch.long)], 1),
        ).loss_itg
        # rows are independent: the batch's loss is each row's mean weighted by its predicted tokens
        rows = [model(**{k: v[i : i + 1] for k, v in inputs.items()}).loss_itg for i in range(6)]
    counts = inputs["attention_mask"][:, 1:].sum(1).float()
    assert counts[0] < counts[1]  # row 0 is padded
    assert padded.item() == pytest.approx(whole.item(), rel=1e-5)
    assert whole.item() == pytest.approx(float((torch.stack(rows) * counts).sum() / counts.sum()), rel=1e-5)


def test_gradients_reach_queries_cross_attention_and_cf_projection(tiny_components):
    model = build(tiny_components).train()
    model(**batch()).loss.backward()
    encoder = model.item_encoder
    assert encoder.query_tokens.grad.abs().sum() > 0
    assert encoder.cf_projection.weight.grad.abs().sum() > 0
    assert encoder.qformer.encoder.layer[0].crossattention.attention.value.weight.grad.abs().sum() > 0
    assert model.temperature.grad is not None
    assert model.cf_embeddings.items.weight.grad is None  # CF tables are data


def test_weights_select_the_losses(tiny_components):
    out = build(tiny_components, {"itc": 1.0, "itm": 0.0, "itg": 0.0})(**batch())
    assert out.loss_itc is not None and out.loss_itm is None and out.loss_itg is None and out.loss_item_item is None
    torch.testing.assert_close(out.loss, out.loss_itc)


def test_itm_never_samples_the_positive_or_a_duplicate():
    torch.manual_seed(0)
    similarity = torch.randn(5, 5) * 3
    similarity.fill_diagonal_(20.0)  # the positive is by far the most similar
    ids = torch.tensor([0, 1, 2, 2, 3])  # rows 2 and 3 are the same item
    same = ids[:, None] == ids[None, :]
    draws = torch.stack([sample_hard_negatives(similarity, same) for _ in range(2000)])
    for row in range(5):
        assert not same[row, draws[:, row]].any()
    assert set(draws[:, 0].tolist()) == {1, 2, 3, 4}  # every valid negative can be drawn
    lonely = sample_hard_negatives(torch.zeros(2, 2), torch.ones(2, 2, dtype=torch.bool))
    assert lonely.tolist() == [-1, -1]


def test_info_nce_masks_duplicates_of_the_positive():
    logits = torch.tensor([[5.0, 5.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    with_dup = info_nce(logits, torch.tensor([7, 7, 8]))
    without = info_nce(logits, torch.tensor([7, 9, 8]))
    assert with_dup < without  # key 1 is the same item as row 0's positive: not a negative


def test_single_process_needs_no_process_group(tiny_components):
    assert not dist.is_initialized()
    out = build(tiny_components)(**batch())
    assert torch.isfinite(out.loss)


def test_phase1_checkpoint_loads_into_the_generation_model(tiny_components, tmp_path):
    phase1 = build(tiny_components)
    phase1.save_pretrained(tmp_path)
    model = ILMForConditionalGeneration.from_pretrained(tmp_path)
    for name, tensor in phase1.state_dict().items():
        if name.startswith(("item_encoder.", "cf_embeddings.")):
            assert torch.equal(model.state_dict()[name], tensor), name
    assert model.config.num_items == 12 and not any(p.requires_grad for p in model.language_model.parameters())
    again = ILMForItemTextPretraining.from_pretrained(tmp_path)
    assert torch.equal(again.temperature, phase1.temperature)
