"""The frozen LM head at the last prompt position: a strided slice against an index.

    python benchmarks/bench_lm_head.py [--batch 16] [--length 439] [--repeats 5]

`generate` and prefill-only forwards keep the last position's logits (`logits_to_keep=1`); the LLM
slices its hidden states to `[:, -1:]`, a strided view. With a frozen head (requires_grad=False, as
the ILM's LLM always is), torch's matmul of that 3-D view broadcasts the head once per row and copies
it, where a contiguous input (the same column taken by index) runs one small matmul.
`ILMForConditionalGeneration.forward` therefore turns a count into indices. The head has the default
LLM's shape (SmolLM2-135M: 576 x 49152); the values do not matter.
"""

import argparse

import torch

from bench_generation import best_of


def head_times(batch=16, length=439, hidden=576, vocab=49152, repeats=5) -> list:
    """(dtype, requires_grad, best s by slice, best s by index) for float32 and bfloat16 heads."""
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for trainable in (True, False):
            head = torch.nn.Linear(hidden, vocab, bias=False).to(dtype).requires_grad_(trainable)
            states = torch.randn(batch, length, hidden, dtype=dtype)
            last = torch.tensor([length - 1])
            with torch.no_grad():
                by_slice = best_of(repeats, lambda: head(states[:, -1:, :]))[0]
                by_index = best_of(repeats, lambda: head(states[:, last, :]))[0]
            rows.append((str(dtype).removeprefix("torch."), trainable, by_slice, by_index))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16, help="prompts per forward (the evaluation's batch)")
    parser.add_argument("--length", type=int, default=439, help="prompt length (a 20-candidate prompt of the CPU preset)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"LM head at the last of {args.length} positions, batch {args.batch}, {torch.get_num_threads()} threads (best of {args.repeats})")
    print("| dtype | head trainable | strided slice [:, -1:] | index [:, [L-1]] | slice / index |")
    print("|---|---|---|---|---|")
    for dtype, trainable, by_slice, by_index in head_times(args.batch, args.length, repeats=args.repeats):
        print(f"| {dtype} | {trainable} | {by_slice * 1e3:.1f} ms | {by_index * 1e3:.1f} ms | {by_slice / by_index:.1f}x |")


if __name__ == "__main__":
    main()
