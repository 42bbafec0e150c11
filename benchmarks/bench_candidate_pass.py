"""The evaluation's candidate pass taken apart, and its greedy answers decoded against read off.

    python benchmarks/bench_candidate_pass.py [--model runs/ml100k/model] [--data runs/ml100k/data] [--users 48]

For each batch of validation users' 20-candidate prompts, in one run: the prompts' forward
(prefill), the likelihood pass over the candidates' titles, and each greedy answer (free, and
constrained to the candidates' titles, guided by the ranking head where the model has one)
decoded by `generate` against read off the likelihood pass (`lm.follow_answers`; only the answers
that leave the titles are decoded). Prints seconds per part and how many answers agree, for the
ILM and for the text-only baseline (its frozen LLM reading titles), in the precision the main job
evaluates in (`--dtype auto`).
"""

import argparse
import time

from modeling_ilm import ILMForConditionalGeneration, ILMProcessor
from training import assets
from training.evaluate.lm import ChatModel
from training.evaluate.prompts import CANDIDATE_TEMPLATE, recommendation_prompt, text_processor
from training.evaluate.protocol import load_protocol
from training.evaluate.recommendation import head_scorer

PARTS = ("prefill", "likelihood", "free decoded", "free read off", "constrained decoded", "constrained read off")


def timed(seconds, part, fn):
    start = time.perf_counter()
    out = fn()
    seconds[part] += time.perf_counter() - start
    return out


def candidate_pass(chat, protocol) -> tuple:
    """({part: seconds}, {generation: answers agreeing}) over the protocol's users."""
    head = head_scorer(chat, protocol) if chat.has_ranking_head else None  # read from the next-item prompts, not timed
    seconds, agree = dict.fromkeys(PARTS, 0.0), {"free": 0, "constrained": 0}
    for start in range(0, len(protocol.users), chat.batch_size):
        users = protocol.users[start : start + chat.batch_size]
        candidates = [protocol.candidates[u] for u in users]
        prompts = [recommendation_prompt(protocol, u, CANDIDATE_TEMPLATE, with_candidates=True) for u in users]
        prefill = timed(seconds, "prefill", lambda: chat.prefill(prompts))
        titles = [[protocol.titles[c] for c in row] for row in candidates]
        scored = timed(seconds, "likelihood", lambda: chat.score_rows(prefill, titles))
        constraint = {"candidates": candidates, "candidate_scores": [head(u, row) for u, row in zip(users, candidates)] if head else None}
        for name, options in (("free", {}), ("constrained", constraint)):
            decoded = timed(seconds, f"{name} decoded", lambda: chat.generate_batch(prefill, **options))
            read = timed(seconds, f"{name} read off", lambda: chat.generate_batch(prefill, scored=scored, **options))
            agree[name] += sum(a == b for a, b in zip(decoded, read))
    return seconds, agree


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/ml100k/model", help="a trained ILM folder")
    parser.add_argument("--data", default="runs/ml100k/data", help="its data folder")
    parser.add_argument("--users", type=int, default=48, help="validation users (batches of 16)")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args(argv)
    device = assets.device()
    dtype = assets.dtype(args.dtype, device)
    model = assets.inference_model(ILMForConditionalGeneration.from_pretrained(args.model), device, dtype)
    processor = ILMProcessor.from_pretrained(args.model)
    protocol = load_protocol(args.data, split="validation", users=args.users)
    chats = {
        "ILM": ChatModel(model, processor),
        "text-only LLM": ChatModel(model.language_model, text_processor(processor.tokenizer, protocol.catalog), as_text=True),
    }
    print(f"\n{len(protocol.users)} validation users, 20 candidates, {str(dtype).removeprefix('torch.')} on {device}")
    print("| model | " + " | ".join(f"{p} (s)" for p in PARTS) + " | read off / decoded | answers agreeing (free, constrained) |")
    print("|---" * (len(PARTS) + 3) + "|")
    for name, chat in chats.items():
        seconds, agree = candidate_pass(chat, protocol)
        decoded = seconds["free decoded"] + seconds["constrained decoded"]
        read = seconds["free read off"] + seconds["constrained read off"]
        print(f"| {name} | " + " | ".join(f"{seconds[p]:.1f}" for p in PARTS)
              + f" | {read / decoded:.2f} | {agree['free']}, {agree['constrained']} of {len(protocol.users)} |", flush=True)


if __name__ == "__main__":
    main()
