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
from training import assets


def best_of(repeats, fn):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=10)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--queries", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    llm_path = assets.default_llm_path()
    catalog = {"items": [{"item_id": str(i), "title": f"Movie {i}"} for i in range(args.items)], "users": []}
    processor = ILMProcessor.from_components(llm_path, catalog=catalog, num_query_tokens=args.queries)
    model = ILMForConditionalGeneration.from_components(
        llm_path, assets.default_qformer_path(), item_token_id=processor.item_token_id, user_token_id=processor.user_token_id,
        num_query_tokens=args.queries, item_embeddings=torch.randn(args.items, 64),
    ).eval()
    base = AutoModelForCausalLM.from_pretrained(llm_path, dtype=torch.float32).eval()

    prompt = [{"role": "user", "content": "I watched " + ", ".join(["<item>"] * args.items) + ". What next?"}]
    ilm_inputs = processor(messages=prompt, item_ids=[str(i) for i in range(args.items)])
    # the bare LLM gets a text prompt of exactly the same length
    text_inputs = {"input_ids": ilm_inputs["input_ids"].masked_fill(ilm_inputs["input_ids"] >= base.config.vocab_size, 1000), "attention_mask": ilm_inputs["attention_mask"]}
    catalog_tokens = model.get_item_tokens(torch.arange(args.items))
    precomputed = {k: v for k, v in ilm_inputs.items() if k != "item_ids"} | {"item_tokens": catalog_tokens[ilm_inputs["item_ids"]]}
    generate = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)

    with torch.no_grad():
        runs = {
            "bare LLM (text prompt)": lambda: base.generate(**text_inputs, **generate),
            "ILM, precomputed item tokens": lambda: model.generate(**precomputed, **generate),
            "ILM, items encoded at prefill": lambda: model.generate(**ilm_inputs, **generate),
        }
        for fn in runs.values():
            fn()  # warm-up
        results = {name: best_of(args.repeats, fn) for name, fn in runs.items()}
    reference = results["bare LLM (text prompt)"][0]
    print(f"\nprompt {ilm_inputs['input_ids'].shape[1]} tokens ({args.items} items x {args.queries} tokens), {args.new_tokens} new tokens, best of {args.repeats}")
    print("| run | best s | median s | ratio to bare LLM |\n|---|---|---|---|")
    for name, (best, median) in results.items():
        print(f"| {name} | {best:.3f} | {median:.3f} | {best / reference:.3f} |")


if __name__ == "__main__":
    main()
