"""Language preservation: on text-only prompts the ILM must be its frozen base LLM, logit for logit."""

import torch

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a short poem about the sea."}],
    [{"role": "user", "content": "Recommend a film for a rainy evening and say why."}],
]


@torch.no_grad()
def max_logit_difference(model, processor, base_llm, prompts=PROMPTS) -> float:
    """Max |ILM logit - base LLM logit| over the real (unpadded) positions of a few chats."""
    batch = processor(messages=prompts, add_generation_prompt=True)
    inputs = {"input_ids": batch["input_ids"].to(model.device), "attention_mask": batch["attention_mask"].to(model.device)}
    ilm = model(**inputs).logits
    base = base_llm(**inputs).logits.to(ilm.device)
    real = inputs["attention_mask"].bool()
    return float((ilm - base).abs()[real].max())
