"""Generation cost: bare LLM vs ILM with precomputed item tokens vs ILM encoding items at prefill.

    python benchmarks/bench_generation.py [--items 10] [--new-tokens 32] [--repeats 3]

Same prompt length and the same number of generated tokens for all three, on the default
components (untrained encoder: cost does not depend on the weights). Prints a table; the
target is a ratio of ~1.0 for precomputed item tokens vs the bare LLM.
"""

import argparse
import statistics
import time

import torch
from transformers import AutoModelForCausalLM

from modeling_ilm import ILMForConditionalGeneration, ILMProcessor
from modeling_ilm.configuration_ilm import ITEM_TOKEN
from training import assets


def best_of(repeats, fn):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def generation_times(items=10, new_tokens=32, queries=4, repeats=3, device="cpu"):
    """{run: (best s, median s)} for the bare LLM, the ILM with precomputed item tokens, and the
    ILM encoding items at prefill, on prompts of the same length; also the prompt length."""
    llm_path = assets.default_llm_path()
    catalog = {"items": [{"item_id": str(i), "title": f"Movie {i}"} for i in range(items)], "users": []}
    processor = ILMProcessor.from_components(llm_path, catalog=catalog, num_query_tokens=queries)
    model = ILMForConditionalGeneration.from_components(
        llm_path, assets.default_qformer_path(), item_token_id=processor.item_token_id, user_token_id=processor.user_token_id,
        num_query_tokens=queries, item_embeddings=torch.randn(items, 64),
    ).eval().to(device)
    base = AutoModelForCausalLM.from_pretrained(llm_path, dtype=torch.float32).eval().to(device)

    prompt = [{"role": "user", "content": "I watched " + ", ".join([ITEM_TOKEN] * items) + ". What next?"}]
    ilm_inputs = processor(messages=prompt, item_ids=[str(i) for i in range(items)]).to(device)
    # the bare LLM gets a text prompt of exactly the same length
    text_inputs = {"input_ids": ilm_inputs["input_ids"].masked_fill(ilm_inputs["input_ids"] >= base.config.vocab_size, 1000), "attention_mask": ilm_inputs["attention_mask"]}
    catalog_tokens = model.get_item_tokens(torch.arange(items, device=device))
    precomputed = {k: v for k, v in ilm_inputs.items() if k != "item_ids"} | {"item_tokens": catalog_tokens[ilm_inputs["item_ids"]]}
    generate = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)

    def timed(fn):
        def run():
            fn()
            if device != "cpu":
                torch.cuda.synchronize()
        return run

    with torch.no_grad():
        runs = {
            "bare LLM (text prompt)": timed(lambda: base.generate(**text_inputs, **generate)),
            "ILM, precomputed item tokens": timed(lambda: model.generate(**precomputed, **generate)),
            "ILM, items encoded at prefill": timed(lambda: model.generate(**ilm_inputs, **generate)),
        }
        for fn in runs.values():
            fn()  # warm-up
        return {name: best_of(repeats, fn) for name, fn in runs.items()}, ilm_inputs["input_ids"].shape[1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=10)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--queries", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results, prompt_length = generation_times(args.items, args.new_tokens, args.queries, args.repeats, "cuda" if torch.cuda.is_available() else "cpu")
    reference = results["bare LLM (text prompt)"][0]
    print(f"\nprompt {prompt_length} tokens ({args.items} items x {args.queries} tokens), {args.new_tokens} new tokens, best of {args.repeats}")
    print("| run | best s | median s | ratio to bare LLM |\n|---|---|---|---|")
    for name, (best, median) in results.items():
        print(f"| {name} | {best:.3f} | {median:.3f} | {best / reference:.3f} |")


if __name__ == "__main__":
    main()
