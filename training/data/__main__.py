"""python -m training.data build --dataset ml-100k --out runs/ml100k/data"""

import argparse
import logging
import sys

from .build import BuildConfig, build_dataset, summary


def optional_int(s):
    return None if s.lower() in ("none", "all", "0") else int(s)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m training.data", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build splits, CF embeddings, phase-1/2 datasets and candidates")
    b.add_argument("--out", required=True, help="output folder")
    src = b.add_argument_group("source (default: the embedded ml-100k)")
    src.add_argument("--dataset", default="ml-100k", help="embedded dataset name (only ml-100k)")
    src.add_argument("--recbole", help="an already downloaded recbole-1.2.1 wheel or extracted folder")
    src.add_argument("--grouplens", help="a GroupLens ml-100k folder (u.data, u.item, u.user)")
    src.add_argument("--interactions", help="generic interactions table (.csv/.tsv/.parquet)")
    src.add_argument("--items", help="generic items table")
    src.add_argument("--users", help="generic users table (optional)")
    d = BuildConfig()
    opt = b.add_argument_group("options")
    opt.add_argument("--seed", type=int, default=d.seed)
    opt.add_argument("--cf-dim", type=int, default=d.cf_dim)
    opt.add_argument("--cf-iterations", type=int, default=d.cf_iterations)
    opt.add_argument("--cf-reg", type=float, default=d.cf_reg)
    opt.add_argument("--cf-alpha", type=float, default=d.cf_alpha, help="confidence = 1 + alpha * rating")
    opt.add_argument("--cf-threads", type=int, default=d.cf_threads)
    opt.add_argument("--history-len", type=int, default=d.history_len)
    opt.add_argument("--num-candidates", type=int, default=d.num_candidates)
    opt.add_argument("--num-train-candidates", type=int, default=d.num_train_candidates,
                     help="candidates per training candidate-selection prompt (default: --num-candidates)")
    opt.add_argument("--pair-window", type=int, default=d.pair_window)
    opt.add_argument("--holdout-frac", type=float, default=d.holdout_frac)
    opt.add_argument("--like-threshold", type=float, default=d.like_threshold)
    opt.add_argument("--max-train-per-task", type=optional_int, default=d.max_train_per_task, help="'all' for no cap")
    opt.add_argument("--max-eval-per-task", type=optional_int, default=d.max_eval_per_task, help="'all' for no cap")
    opt.add_argument("--item-noun", default=d.item_noun, help="word used for items in prompts")
    opt.add_argument("--candidate-titles", action="store_true", help="candidate lists show each title before its item tokens")
    opt.add_argument("--candidate-lines", action="store_true", help="candidate lists show one candidate per line")
    opt.add_argument("--no-candidate-tokens", dest="candidate_tokens", action="store_false",
                     help="with --candidate-titles: candidates show their titles alone, no item tokens")
    opt.add_argument("--candidate-tokens-first", action="store_true",
                     help="with --candidate-titles: each candidate's item tokens before its title (\"<item> Heat (1995)\")")
    opt.add_argument("--no-candidate-title-space", dest="candidate_title_space", action="store_false",
                     help="with --candidate-tokens-first: no space before each candidate's title (\"<item>Heat (1995)\"), so it is "
                          "tokenized as an answer naming it is")
    args = p.parse_args(argv)

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    config = BuildConfig(**{k: v for k, v in vars(args).items() if k in BuildConfig.__dataclass_fields__})
    try:
        stats = build_dataset(
            args.out,
            args.dataset,
            args.interactions,
            args.items,
            args.users,
            args.grouplens,
            args.recbole,
            config=config,
        )
    except (ValueError, FileNotFoundError, FileExistsError) as e:  # bad data or arguments; DataValidationError included
        sys.exit(f"error: {e}")
    print(summary(stats))


if __name__ == "__main__":
    main()
