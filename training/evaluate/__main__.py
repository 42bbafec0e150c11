"""python -m training.evaluate: evaluate an ILM folder and/or the baselines, or merge results.

  python -m training.evaluate --model runs/ilm --data runs/ml100k/data --users 200 --baselines pop,als,text --out runs/eval
  python -m training.evaluate --merge runs/eval_a/results.json runs/eval_b/results.json --out runs/eval
"""

import argparse
import logging
from pathlib import Path

import torch

from training import assets

from .harness import BASELINES, SECTIONS, evaluate_baselines, evaluate_model, load_base_llm
from .protocol import load_protocol
from .report import merge_results, to_markdown, write_report


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def comma_list(known):
    def parse(text):
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = set(names) - set(known)
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {sorted(unknown)}; choose from {','.join(known)}")
        return names

    return parse


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="ILM folder (model + processor)")
    p.add_argument("--data", help="built data folder (python -m training.data build)")
    p.add_argument("--split", default="test", choices=["validation", "test"])
    p.add_argument("--candidates", help="candidates file {user: [true item, others...]} (default: <data>/candidates/<split>.json)")
    p.add_argument("--users", type=positive_int, help="evaluate the first N users (natural sort order) of the candidates file")
    p.add_argument("--seed", type=int, default=0, help="candidate display order and bootstrap")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs (0: none)")
    p.add_argument("--history-len", type=int, help="history items shown in prompts (default: the data build's, as in training)")
    p.add_argument("--out", default="eval", help="writes results.json and results.md here")
    p.add_argument("--name", help="row name of the model (default: the folder name)")
    p.add_argument("--baselines", type=comma_list(BASELINES), default=[], help=f"comma list of {','.join(BASELINES)}")
    p.add_argument("--sections", type=comma_list(SECTIONS), default=list(SECTIONS), help=f"comma list of {','.join(SECTIONS)}")
    p.add_argument("--full-catalog", action="store_true", help="also rank every catalog item by likelihood (slow on CPU)")
    p.add_argument("--alignment-rows", type=int, default=200, help="rows per alignment task and split (0: all)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="prompts per generation batch")
    p.add_argument("--max-new-tokens", type=positive_int, default=24)
    p.add_argument("--score", default="sum", choices=["sum", "mean"], help="answer log-likelihood: total or per token")
    p.add_argument("--llm", default="default", help="frozen LLM of the text baseline without --model (default: the embedded one)")
    p.add_argument("--sentence-model", help="encoder for semantic consistency (default: the MiniLM asset)")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: cuda when available)")
    p.add_argument("--dtype", default="float32", choices=["auto", *assets.DTYPES], help="precision of the models (auto: bfloat16 on a GPU that supports it or a CPU with AMX or AVX512-BF16, else float32)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice; 1 is faster on an oversubscribed machine)")
    p.add_argument("--merge", nargs="+", metavar="RESULTS_JSON", help="only merge these results.json files into --out")
    args = p.parse_args(argv)
    if not args.merge and not (args.data and (args.model or args.baselines)):
        p.error("pass --data with --model and/or --baselines, or --merge FILES")
    return args


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.merge:
        merged = merge_results(args.merge)
    else:
        protocol = load_protocol(args.data, args.split, args.candidates, args.users, args.seed, args.history_len)
        common = dict(protocol=protocol, bootstrap=args.bootstrap, sections=args.sections, full_catalog=args.full_catalog,
                      batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, reduce=args.score)
        device = assets.device(args.device)
        dtype = assets.dtype(args.dtype, device)
        results, llm, tokenizer = [], None, None
        if args.model:
            from modeling_ilm import ILMForConditionalGeneration, ILMProcessor

            model = assets.inference_model(ILMForConditionalGeneration.from_pretrained(args.model), device, dtype)
            processor = ILMProcessor.from_pretrained(args.model)
            if "preservation" in args.sections or "text" in args.baselines:
                llm, tokenizer = load_base_llm(model), processor.tokenizer  # the frozen LLM as published
            results.append(evaluate_model(
                model, processor, args.data, name=args.name or Path(args.model).resolve().name,
                alignment_rows=args.alignment_rows or None, sentence_model=args.sentence_model, base_llm=llm, **common,
            ))
        if args.baselines:
            results.append(evaluate_baselines(args.data, args.baselines, llm=llm, tokenizer=tokenizer, llm_path=args.llm, device=device, dtype=dtype, **common))
        merged = merge_results(results)
    json_path, md_path = write_report(merged, args.out)
    print(to_markdown(merged))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
