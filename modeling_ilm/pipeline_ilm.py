"""The ILM chat pipeline: messages with `<item>` / `<user>` placeholders and their ids in; the answer
and the catalog item it names out.

Saved model folders name it in `config.custom_pipelines` under "text-generation", so where this
package is not installed:

    pipe = pipeline("text-generation", model="runs/ml100k/model", trust_remote_code=True)
    pipe([{"role": "user", "content": "I liked <item> and <item>. What should I watch next?"}], item_ids=["50", "181"])
    # {"generated_text": "...", "item_id": "..." or None, "title": ... or None}

`recommend=True` decodes among the catalog's titles (or `candidates=[ids]`' titles), following the
ranking head's scores where the model has one (which also leaves out the items the prompt holds), so
the answer always names an item; otherwise the LLM answers freely (greedy by default) and the answer is
matched to the catalog afterwards. Several chats: pass a list of `{"messages", "item_ids", "user_ids"}`.
"""

import torch
from transformers import Pipeline

from .constrained_decoding import GUIDE_WEIGHT


class ILMPipeline(Pipeline):
    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False

    def _sanitize_parameters(self, item_ids=None, user_ids=None, recommend=None, candidates=None, max_new_tokens=None, **generate_kwargs):
        preprocess = {key: value for key, value in (("item_ids", item_ids), ("user_ids", user_ids)) if value is not None}
        forward = dict(generate_kwargs)
        if max_new_tokens is not None:
            forward["max_new_tokens"] = max_new_tokens
        if recommend is not None or candidates is not None:
            forward["recommend"] = bool(recommend or candidates is not None)
            forward["candidates"] = candidates
        return preprocess, forward, {}

    def preprocess(self, inputs, item_ids=None, user_ids=None):
        if isinstance(inputs, dict):  # one of several chats, each with its own ids
            unknown = set(inputs) - {"messages", "item_ids", "user_ids"}
            if unknown or "messages" not in inputs:
                raise ValueError(f"A chat given as a dict holds 'messages' and optionally 'item_ids', 'user_ids'; got keys {sorted(inputs)}.")
            item_ids, user_ids, inputs = inputs.get("item_ids"), inputs.get("user_ids"), inputs["messages"]
        messages = getattr(inputs, "messages", inputs)  # transformers wraps chats in `Chat`
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        model_inputs = self.processor(messages=list(messages), item_ids=item_ids or None, user_ids=user_ids or None)
        model_inputs["prompt_rows"] = self.processor.rows(item_ids or [])
        return model_inputs

    def _forward(self, model_inputs, recommend=False, candidates=None, max_new_tokens=32, **generate_kwargs):
        prompt_rows = model_inputs.pop("prompt_rows")
        if recommend:
            scores = None
            if self.model.item_scorer is not None:
                candidate_ids = None if candidates is None else torch.tensor(self.processor.rows(candidates), device=self.device)
                scores = self.model.score_items(**model_inputs, candidate_ids=candidate_ids).float()
                if candidates is None:
                    scores[:, prompt_rows] = float("-inf")  # not what the user already named
            constraint = self.processor.title_constraint(
                model_inputs["input_ids"], candidates=None if candidates is None else [list(candidates)], scores=scores, score_weight=GUIDE_WEIGHT
            )
            generate_kwargs["logits_processor"] = constraint
        generate_kwargs.setdefault("do_sample", False)
        output = self.model.generate(**model_inputs, max_new_tokens=max_new_tokens, **generate_kwargs)
        return {"answer_ids": output[:, model_inputs["input_ids"].shape[1] :], "candidates": candidates}

    def postprocess(self, model_outputs):
        answer = self.processor.decode(model_outputs["answer_ids"][0]).strip()
        item_id = self.processor.match_item(answer, candidates=model_outputs["candidates"])
        return {"generated_text": answer, "item_id": item_id, "title": None if item_id is None else self.processor.item(item_id).get("title")}


__all__ = ["ILMPipeline"]
