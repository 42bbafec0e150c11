"""The quality ladder: one phase-2 run per lever, all ranked on the VALIDATION split.

    python benchmarks/quality.py --out runs/ladder                      # every row (≈ 10-15 min of CPU each)
    python benchmarks/quality.py --out runs/ladder --rows qformer_1_layer,preset
    python benchmarks/quality.py --out runs/ladder --rows preset --trained preset=runs/ml100k/phase2

Each row's overrides apply to the CPU preset (`training/configs/cpu.yaml`); rows that change phase 1
train their own phase 1 beside the preset's (`--out/phase1*`). All rows are evaluated on the same
first 200 validation users and the same 20 candidates, with 95% bootstrap CIs (resampled alike for
every row, so rows compare paired); popularity, ALS and the text-only LLM on that protocol too.
`--trained NAME=DIR` evaluates a phase-2 folder trained elsewhere (e.g. by `make main`) as row NAME.
The test split is never looked at here: the chosen configuration is evaluated on it once, by
`make main`.

Writes `--out/NAME/row.json` per row, and adds the rows it ran (and the baselines) to
`benchmarks/ladder.json`, the record of every row measured so far: `benchmarks/quality.md` (the
table, with the minutes each row cost) and `benchmarks/learning_curve.png` (validation HR@1 of the
ranking head against phase-2 steps) are written from it, so running some rows keeps the others.
"""

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

HERE = Path(__file__).parent
LADDER = HERE / "ladder.json"
PRESET = HERE.parent / "training" / "configs" / "cpu.yaml"
HEAD = ["ranking_head"]
LIKELIHOOD = ["ranking", "ranking_mean", "ranking_calibrated"]
GENERATION = ["generation"]
PRESET_WEIGHTS = yaml.safe_load(PRESET.read_text())["finetune"]["task_weights"]


@dataclass
class Row:
    adds: str  # what the row changes, against the row above it
    finetune: dict = field(default_factory=dict)  # phase-2 overrides on top of the CPU preset
    pretrain: dict = field(default_factory=dict)  # phase-1 overrides (a separate phase 1 when set)
    data: dict = field(default_factory=dict)  # data-build overrides (a separate build and phase 1 when set)
    sections: list = field(default_factory=lambda: list(HEAD))
    titled: bool = False  # False: the candidate lists of the rows before candidate_titles_8 (bare, 1 share, 20 per prompt)
    dtype: str = "float32"  # evaluation precision; rows before bfloat16 also trained in float32 (the preset's bf16 undone)


# what the preset's candidate lists were before candidate_titles_8, for the rows measured then
BARE_CANDIDATES = {"data": {"candidate_titles": False, "num_train_candidates": None},
                   "finetune": {"task_weights": {**PRESET_WEIGHTS, "candidate_selection": 1}}}


# The ladder, top to bottom, each row one lever on top of the row above; overrides are relative to
# the CPU preset as shipped (the last rows), so earlier rows undo the later levers.
TOKENS = {n: {"num_query_tokens": n, "num_cf_tokens": n} for n in (1, 2)}  # item tokens per item, phase 1 and 2
BEFORE = {"finetune": {"num_train_examples": 960, "max_steps": 120, "curve_steps": 40}, "pretrain": {"num_hidden_layers": 4}}
PRESET_BF16 = {"task_weights": {**PRESET_WEIGHTS, "candidate_selection": 6}, "bf16": "auto"}  # the preset since bfloat16


def latest_row(adds: str, finetune: dict | None = None, pretrain: dict | None = None, data: dict | None = None) -> Row:
    """A row on the preset's levers since candidate_tokens_first (bfloat16, the item prior, CF lengths,
    candidate tokens before titles), with `finetune` / `pretrain` / `data` overrides on top."""
    return Row(adds, {**PRESET_BF16, "ranking_item_prior": True, **(finetune or {})}, {"keep_cf_length": True, **(pretrain or {})},
               data={"candidate_tokens_first": True, **(data or {})}, sections=HEAD + GENERATION, titled=True, dtype="auto")


ROWS = {
    "head_llm_only": Row("ranking head whose query reads only the LLM's hidden states (4-layer Q-Former, 120 steps)",
                         {**BEFORE["finetune"], "ranking_item_similarity": False}, BEFORE["pretrain"]),
    "head_item_similarity": Row("+ the head's query also holds the prompt's item tokens (starts as item-to-item similarity)",
                                BEFORE["finetune"], BEFORE["pretrain"], sections=LIKELIHOOD + HEAD),
    "qformer_1_layer": Row("+ a 1-layer Q-Former (phase 1 and 2) instead of 4", BEFORE["finetune"]),
    "preset": Row("+ 200 phase-2 steps (1600 examples) instead of 120: the CPU preset", sections=LIKELIHOOD + HEAD),  # until candidate_titles_8
    "curriculum": Row("preset + curriculum: the alignment tasks (title, genres, year) first, then the rest",
                      {"curriculum": ["item_title", "item_genres", "item_year"]}),
    "candidate_titles": Row("preset + candidate lists shown as \"Title <item>\" and 3x the candidate-selection examples",
                            {"task_weights": {**PRESET_WEIGHTS, "candidate_selection": 3}},
                            data={"candidate_titles": True, "num_train_candidates": None}, sections=HEAD + GENERATION, titled=True),
    "shuffled_batches": Row("preset + its length-grouped batches in a shuffled order (transformers' megabatches run 50 "
                            "batches longest to shortest: streaks of one task)", {"shuffle_batches": True}),
    "cf_residual": Row("shuffled_batches + a residual path around the Q-Former: item tokens = query outputs + the CF tokens "
                       "they read (phase 1 and 2)", pretrain={"cf_residual": True}),
    # baselines trained exactly like the row above them, for the paper's ordering on validation
    "mlp_adapter": Row("baseline: the CoLLM-style MLP adapter (CF vector -> 4 item tokens), no phase 1, the preset's phase 2",
                       {"adapter_type": "mlp"}),
    "ilm_rand": Row("baseline: the preset's 1-layer Q-Former without phase 1 (ILM-rand)", {"init": "scratch", "num_hidden_layers": 1}),
    # fewer item tokens: shorter prompts, so more examples per minute (phase 1 and 2)
    "query_tokens_2": Row("shuffled_batches with 2 query (and CF) tokens per item instead of 4", TOKENS[2], TOKENS[2]),
    "query_tokens_1": Row("shuffled_batches with 1 query (and CF) token per item", TOKENS[1], TOKENS[1]),
    # shorter recommendation prompts: does the user token carry what a 10-item history does?
    "history_3": Row("shuffled_batches with the last 3 items as history in recommendation prompts instead of 10 (training "
                     "and evaluation)", data={"history_len": 3}),
    # an answer that names a candidate: titled candidate lists, short ones in training (the skill is copying a listed title)
    "candidate_titles_8": Row("shuffled_batches + candidate lists shown as \"Title <item>\", 8 per training prompt (20 in "
                              "evaluation), 3x the candidate-selection examples",
                              {"task_weights": {**PRESET_WEIGHTS, "candidate_selection": 3}},
                              data={"candidate_titles": True, "num_train_candidates": 8}, sections=HEAD + GENERATION, titled=True),
    "candidate_lines": Row("candidate_titles_8 + one candidate per line (\"- Title <item>\") instead of a comma-separated list",
                           {"task_weights": {**PRESET_WEIGHTS, "candidate_selection": 3}},
                           data={"candidate_lines": True}, sections=HEAD + GENERATION, titled=True),
    "candidate_selection_6": Row("candidate_titles_8 with 6 shares of candidate selection instead of 3 (more practice at "
                                 "answering with a listed title)", {"task_weights": {**PRESET_WEIGHTS, "candidate_selection": 6}},
                                 sections=HEAD + GENERATION, titled=True),
    "candidate_titles_only": Row("candidate_selection_6 with each candidate shown by its title alone (the history and user "
                                 "keep their tokens)", {"task_weights": {**PRESET_WEIGHTS, "candidate_selection": 6}},
                                 data={"candidate_tokens": False}, sections=HEAD + GENERATION, titled=True),
    # bfloat16 instructions (AVX512-BF16, AMX): the same steps in less time, or more steps in the same time
    "bfloat16": Row("candidate_selection_6 trained with bfloat16 autocast and evaluated in bfloat16 (bf16 / dtype auto, on a "
                    "CPU with bfloat16 instructions)", {"task_weights": {**PRESET_WEIGHTS, "candidate_selection": 6}, "bf16": "auto"},
                    sections=HEAD + GENERATION, titled=True, dtype="auto"),
    "bfloat16_300": Row("bfloat16 with 300 phase-2 steps (2400 examples) instead of 200: about the float32 row's minutes",
                        {"task_weights": {**PRESET_WEIGHTS, "candidate_selection": 6}, "bf16": "auto", "max_steps": 300,
                         "num_train_examples": 2400}, sections=HEAD + GENERATION, titled=True, dtype="auto"),
    # what an item's CF vector says beyond its direction: its length, which in ALS tracks how often it is picked
    "item_prior": Row("bfloat16 + a learned score per item in the ranking head, read from the item's tokens (zero at "
                      "init)", {**PRESET_BF16, "ranking_item_prior": True}, sections=HEAD + GENERATION, titled=True, dtype="auto"),
    "cf_length": Row("item_prior + CF vectors divided by the table's RMS instead of layer-normalised one by one, so the "
                     "encoder sees their lengths (phase 1 and 2)", {**PRESET_BF16, "ranking_item_prior": True},
                     {"keep_cf_length": True}, sections=HEAD + GENERATION, titled=True, dtype="auto"),
    "cf_length_no_prior": Row("cf_length without the item prior: the CF lengths alone", PRESET_BF16, {"keep_cf_length": True},
                              sections=HEAD + GENERATION, titled=True, dtype="auto"),
    "cf_length_residual": Row("cf_length + the residual path around the Q-Former (item tokens = query outputs + the CF tokens "
                              "they read, which now carry the length)", {**PRESET_BF16, "ranking_item_prior": True},
                              {"keep_cf_length": True, "cf_residual": True}, sections=HEAD + GENERATION, titled=True, dtype="auto"),
    # the preset as `make main` trained it on the 2-core Intel Xeon (AMX) where the rows below ran: their reference
    "cf_length_intel": Row("cf_length (the CPU preset until candidate_tokens_first) trained by make main on the Intel machine the next rows ran on",
                           {**PRESET_BF16, "ranking_item_prior": True}, {"keep_cf_length": True},
                           sections=HEAD + GENERATION, titled=True, dtype="auto"),
    # the greedy answers that name no candidate are mis-copied titles ("Dazed and Confusing (1993)"): more copying practice
    "candidate_selection_12": Row("cf_length with 12 shares of candidate selection instead of 6 (the same 1600 examples)",
                                  {**PRESET_BF16, "task_weights": {**PRESET_WEIGHTS, "candidate_selection": 12}, "ranking_item_prior": True},
                                  {"keep_cf_length": True}, sections=HEAD + GENERATION, titled=True, dtype="auto"),
    # or make copying easier: after "<item>" comes the title to copy, where "Title <item>" has the next candidate's title
    "candidate_tokens_first": latest_row("cf_length with each candidate's item tokens before its title (\"<item> Heat (1995)\")"),
    "ranking_negatives_64": latest_row("candidate_tokens_first (the CPU preset) with 64 sampled catalog items in the head's softmax instead of 256 (fewer items through the float32 encoder each step)",
                                       finetune={"ranking_negatives": 64}),
    "phase1_480": latest_row("candidate_tokens_first (the CPU preset) with 480 phase-1 steps instead of 120 (4x the item-text and item-item pretraining)",
                             pretrain={"max_steps": 480}),
    "phase1_960": latest_row("phase1_480 (the CPU preset) with 960 phase-1 steps: does a longer phase 1 keep paying?", pretrain={"max_steps": 960}),
    "encoder_lr_960": latest_row("phase1_960 with the item encoder at 1e-4 in phase 2 (the adapter and head at 3e-4): does phase 2 keep the strong phase-1 start?",
                                 finetune={"encoder_learning_rate": 1e-4}, pretrain={"max_steps": 960}),
    "ranking_negatives_all": latest_row("phase1_480 (the CPU preset) with every catalog item (1681) in the head's softmax instead of 256 sampled (E4SRec's full softmax)",
                                        finetune={"ranking_negatives": 1681}, pretrain={"max_steps": 480}),
    "ranking_loss_weight_3": latest_row("phase1_480 (the CPU preset) with the ranking loss weighted 3 instead of 1 next to the answer loss",
                                        finetune={"ranking_loss_weight": 3.0}, pretrain={"max_steps": 480}),
    "next_item_rank_only": latest_row("phase1_480 (the CPU preset) with next-item prompts training the ranking head only: no answer loss on a title the prompt "
                                      "does not show (does it teach inventing titles?)", finetune={"ranking_only_tasks": ["next_item_title"]}, pretrain={"max_steps": 480}),
    "train_candidates_20": latest_row("phase1_480 (the CPU preset) with 20 candidates per training prompt, as in evaluation, instead of 8",
                                      pretrain={"max_steps": 480}, data={"num_train_candidates": 20}),
    "phase1_960_frozen_words": latest_row("phase1_960 with the Q-Former's word embeddings frozen in phase 1 (a 0.72x step): the longer phase 1 in less time",
                                          pretrain={"max_steps": 960, "freeze_word_embeddings": True}),
    "phase1_480_float32": latest_row("phase1_480 (the CPU preset) trained and evaluated in float32 by make main on a 2-core AMD EPYC with AVX2 only "
                                     "(no bfloat16 instructions), the machine of the next row", pretrain={"max_steps": 480}),
    # a third of ml-100k's titles start with a word that BPE splits otherwise after a space (" Toy" against "T", "oy"),
    # so an answer naming such a candidate has tokens that the prompt never shows
    "title_unspaced": latest_row("phase1_480_float32 with no space between each candidate's item tokens and its title (\"<item>Heat (1995)\"): "
                                 "the title's tokens are the answer's", pretrain={"max_steps": 480}, data={"candidate_title_space": False}),
    # the head's step-0 function reads no LLM state: it can learn from all ~97k train (history -> next item) pairs in seconds
    "ranking_warmup": latest_row("title_unspaced + a ranking warm-up: before phase 2, the new head's item-similarity part (no LLM) trained "
                                 "300 steps x 256 on every train (last 10 items -> next item) pair, a softmax over the catalog",
                                 {"ranking_warmup_steps": 300}, pretrain={"max_steps": 480}, data={"candidate_title_space": False}),
    # the preset as make main trained it on the machine the next rows ran on (its phase 1 and data build are theirs too)
    "title_unspaced_bf16": latest_row("title_unspaced (the CPU preset) trained in bfloat16 by make main on a 2-core AMD EPYC with AVX512-BF16, "
                                      "the machine of the next rows", pretrain={"max_steps": 480}, data={"candidate_title_space": False}),
    "ranking_pairs": latest_row("ranking_warmup + a pair loss: at every phase-2 step the head's item part also ranks 64 train (last 10 items -> "
                                "next item) pairs, through the item encoder and adapter as they train",
                                {"ranking_warmup_steps": 300, "ranking_pairs_per_step": 64, "ranking_pairs_train_adapter": True},
                                pretrain={"max_steps": 480}, data={"candidate_title_space": False}),
    "ranking_pairs_encoder": latest_row("ranking_pairs with the pair loss's gradient stopped at the adapter: the pairs train the item encoder and the head's "
                                        "item part, the adapter learns from the answers only",
                                        {"ranking_warmup_steps": 300, "ranking_pairs_per_step": 64}, pretrain={"max_steps": 480}, data={"candidate_title_space": False}),
}
# Measured by hand on the same 200 validation users while building the ladder (no training involved
# unless said): what each representation of an item ranks by itself, as item-to-item similarity to
# the user's last 10 items (mean cosine), and the earlier probes that shaped the rows above.
DIAGNOSTICS = [
    "- Item-to-item similarity over raw ALS vectors ranks at HR@1 0.440 [0.370, 0.500] (ALS user·item: 0.490): most of the CF "
    "signal is item-to-item, which a query built from the prompt's item tokens can read from step 0.",
    "- Every head row ended at 0.40-0.42 whatever the lever, and the encoder layer-normalised each CF vector, which drops its "
    "length. In ALS the length tracks popularity (correlation 0.96 with the log of the item's train count). "
    "benchmarks/cf_probe.py scores the raw ALS vectors against the user's last 10 history items (validation; the test "
    "split's figures in brackets, printed once and used for no choice): mean cosine 0.440 (0.380), the same on "
    "layer-normalised vectors 0.430 (0.395), cosine plus 0.1 x the log length 0.515 (0.480), dot product with the "
    "history's mean 0.540 (0.480), against ALS user·item's 0.490 (0.365) and the length alone 0.245 (0.220): direction "
    "and length together rank above either, and above ALS's user vectors. An earlier hand probe found no gain in recency "
    "weights over the history (0.460 at 0.9 per step, 0.370 at 0.5). Rows item_prior and cf_length give the model both.",
    "- The same over the Q-Former's item outputs: 4 layers 0.120 at init and 0.285 after phase 1; 1 layer 0.305 at init and "
    "0.335 after phase 1 (its CF tokens, before the BERT layers: 0.415-0.425). Deeper stacks lose CF signal that 120 phase-1 "
    "steps do not win back, and a 1-layer phase 1 also scores better on its own metrics (item-item recall@10 0.083 vs 0.069) "
    "in a third of the time (1.2 vs 3.5 min).",
    "- Earlier probes of the LLM-only head (stopped early, no CIs): query read only at the answer position: 0.185 at step 0, "
    "0.18-0.21 after; a candidate-selection task in the ranking rows let the head learn \"pick what the prompt lists\" "
    "(rank loss ~1.0 there), so ranking labels come from next-item prompts only; learning rate 1e-3 instead of 3e-4: 0.20 at "
    "step 30 against 0.245.",
    "- Greedy answers to the candidate prompt never name a candidate with bare item tokens (valid ratio 0.000 on test); with "
    "candidate titles in the prompt (candidate_titles) 0.745 [0.685, 0.805] do, but the choice is at chance (HR@1 0.040), "
    "and those long prompts (~450 tokens) cost ~9 more minutes of phase 2, so the preset kept bare tokens (until "
    "candidate_titles_8, below).",
    "- Head-guided decoding (the candidates' titles as a prefix trie, each path weighted by the ranking head's best "
    "reachable score; shuffled_batches model, same users): guide weight 1: valid 1.000, HR@1 0.265; 10: 0.380; 100: "
    "0.410, the head's own HR@1, so evaluation and the demo use 100 (`GUIDE_WEIGHT`).",
    "- shuffled_batches: transformers' length grouping runs each megabatch of 50 batches from longest to shortest, so "
    "next-item batches (the ranking head's only labels) come in streaks and the head drifts between them (preset curve "
    "0.305 -> 0.280 at steps 50-100; candidate_titles 0.225 at step 100); shuffled batches give a monotone curve.",
    "- Minutes of candidate_titles, shuffled_batches and mlp_adapter were taken while other jobs (tests, a diagnostic) ran "
    "beside them, so they overstate the cost (the main job's split in README is measured alone).",
    "- cf_residual: item tokens that add the CF tokens to the query outputs keep the CF geometry (the head starts at 0.415 "
    "instead of 0.330, and phase 1's item-item recall@10 is 0.088 instead of 0.083), but phase 2 then adds nothing (0.425 at "
    "step 50, 0.405 at 200): no gain at the end, so the preset keeps the plain Q-Former; the option stays (`cf_residual`).",
    "- mlp_adapter and ilm_rand are the paper's baselines trained exactly like the preset (their test rows are in the README). "
    "Until this ladder ILM-rand was built with MiniLM's 6 layers while the ILM has 1, so it measured depth as well as phase 1. "
    "Trained alike, every encoder ends at the same validation HR@1 after 200 phase-2 steps: ILM 0.410, ILM with the CF "
    "residual 0.405, ILM-rand 0.405, MLP adapter 0.395 (CIs about +-0.07). Phase 1 buys a head start (0.330 at step 0 against "
    "ILM-rand's 0.225) that phase 2 closes by step 150; what the head ranks with is the CF geometry the item tokens keep.",
    "- query_tokens_2: 2 item tokens instead of 4 make prompts 16% shorter (92 against 110 tokens) and end at the same HR@1 "
    "(0.415 against 0.410), with a weaker phase 1 (item-item recall@10 0.070 against 0.083); the phase-2 minutes did not "
    "drop in proportion, so the preset keeps 4.",
    "- query_tokens_1: one item token per item ends lower (0.370 against 0.410; within the CIs) with a phase 1 as good on "
    "its own metrics (item-item recall@10 0.085); history_3: the last 3 history items instead of 10 in recommendation "
    "prompts (training and evaluation) end at 0.395, so the user token and 3 items carry about what 10 items do. Neither "
    "shortens phase 2 (11.9 and 12.9 min, each alone on the machine, against 12.7 for 2 tokens; the minutes include five "
    "learning-curve evaluations): the shorter prompts ran at fewer tokens per second (188 and 174, against 245 for the "
    "preset's batches in speed.py), a cause not profiled here. So the preset keeps 4 tokens and 10 history items.",
    "- candidate_titles_8 (now the CPU preset): the titled candidate lists of candidate_titles, but 8 candidates per training "
    "prompt (20 in evaluation, as before): mean phase-2 prompt 130 tokens instead of 110 (candidate_titles: ~450 per "
    "candidate prompt). Greedy answers name a candidate as often (valid 0.745 [0.690, 0.805], the same as with 20 per "
    "prompt) and the head ends where it did (0.415 against 0.410), so the preset takes it. The choice stays at chance "
    "(greedy HR@1 0.040): the frozen LLM learns to copy a listed title, not which one. Of 64 validation answers, the 13 "
    "that name no candidate are mangled copies that start inside a title (\"Minnesota (1996)\", \"Big Blue, The (1988)\"): "
    "titles hold commas, and the lists are comma separated. Phase 2 took 16.5 min on a machine where the preset's took "
    "17.4 min (the step keeps logits at the answer positions only since this row).",
    "- candidate_lines: one candidate per line (\"- Big Blue, The (1988) <item>\") so no title's own comma can blur where it "
    "ends. Fewer answers name a candidate (valid 0.690 [0.625, 0.755] against 0.745; the head unchanged at 0.415). Of 14 "
    "failures among 48 validation answers, one is a copy that starts inside a title (\"Dorothy Day Story (1996)\" for "
    "\"Entertaining Angels: The Dorothy Day Story (1996)\"), a few are sentences, and most are invented titles "
    "(\"Czechoslovakia (1997)\", \"Clarion (1993)\"). The separator was not what the failures were about, so the preset keeps commas; the option stays (`candidate_lines`). Phase 2 took "
    "19.4 min (five learning-curve points, against three in the main job).",
    "- candidate_selection_6: twice the candidate-selection share (6 weight units of 16 instead of 3 of 13, taken from the "
    "other tasks, next-item prompts included; mean phase-2 prompt 152 tokens instead of 132): valid 0.815 [0.765, 0.865] "
    "against 0.745, the head 0.395 against 0.415 (within the CIs), greedy HR@1 0.055, still at chance. Practice at "
    "answering with a listed title is what moves the valid ratio. The CPU preset takes it.",
    "- candidate_titles_only: the same, but each candidate shown by its title alone (no item tokens in the list): prompts "
    "11% shorter (mean 135 tokens), the head level (0.400), but fewer answers name a candidate (0.635 [0.570, 0.705] "
    "against 0.815): the item tokens beside a title help the LLM copy it whole. The option stays (`candidate_tokens`).",
    "- A user-similarity term for the head, probed on the trained candidate_titles_8 model without training: the key "
    "projection of the user's own tokens against the candidates' keys ranks at 0.275, the same for the mean of the "
    "history's item tokens 0.315, both summed 0.325, against the head's 0.415 and ALS user·item's 0.490: the user "
    "tokens do not keep ALS's user-item geometry, so no row was run.",
    "- bfloat16: this machine's CPU (AMD EPYC, 2 cores) has AVX512-BF16 but no AMX; there bfloat16 matrix products run at "
    "2.2x float32's (405 against 180 GFLOP/s), the LLM's prefill at 2.5x and its forward + backward at 1.6x. A first run "
    "autocast everything, the item encoder and the head included: the head's step-0 point fell from 0.335 to 0.280 and "
    "the row ended at 0.380 (valid 0.785, 12.1 min). Evaluated with every weight cast to bfloat16, the float32-trained "
    "candidate_selection_6 model ranked at 0.375 against its 0.395; with only the LLM cast, at 0.395 exactly. So the "
    "item encoder and the head compute in float32 under autocast (`float32_region` in modeling_ilm) and stay float32 "
    "in evaluation (`assets.inference_model`): the row above was run so, its curve follows the float32 row's point for "
    "point to step 100, and it took 11.5 min of phase 2 instead of 18.6 (355 real tokens/s against 220) and 2.7 min of "
    "evaluation instead of 4.4. bf16 and evaluate.dtype are `auto` in the CPU preset: float32 on CPUs without "
    "bfloat16 instructions.",
    "- bfloat16_300: the saved minutes spent on 300 steps (2400 examples) instead: 18.1 min of phase 2, head 0.405 [0.335, "
    "0.480], valid 0.755: nothing bought (the longer cosine schedule stays at a high learning rate longer: 0.145 at step "
    "50, then 0.360-0.410 from step 100). The curve is flat from step ~150 at this budget, so the preset keeps 200 steps "
    "and the shorter run.",
    "- item_prior: a learned score per item (LayerNorm + a linear map of the mean of its item tokens, zero at init) added "
    "to the head's scores, with the CF vectors still layer-normalised: 0.390 [0.325, 0.455], valid 0.750; nothing bought "
    "alone (the tokens it reads have lost the length).",
    "- cf_length: the same prior, with phase 1 and 2 dividing every CF vector by the item table's RMS (one number, saved "
    "as cf_scale) instead of layer-normalising each, so the item tokens can carry the length: head 0.435 [0.370, 0.505], "
    "NDCG@5 0.678 against 0.629, valid 0.850 [0.800, 0.895] against 0.760, 11.3 min of phase 2; the step-0 point 0.350 "
    "against item_prior's 0.330. cf_length_no_prior (the lengths without the prior): 0.410 / NDCG@5 0.660 / valid 0.825; "
    "cf_length_residual (+ cf_residual): 0.430 / 0.673 / 0.785. The head's HR@1 moves inside its CIs, but both length rows "
    "raise NDCG@5 and the valid ratio together; the CPU preset takes cf_length, the best on validation. The curve "
    "(0.350, 0.365, 0.430, 0.420, 0.435) is flat after step 100, as every row's since bfloat16: the probe's 0.515-0.540 is "
    "not reached by more steps of this phase 2.",
    "- The last three rows ran on another machine (2-core Intel Xeon with AMX); cf_length_intel is the CPU preset as "
    "`make main` trained it there (head 0.450, valid 0.795, greedy HR@1 0.065), their reference. Of its 200 greedy "
    "validation answers, 37 name no catalog title and 4 are a title's prefix: mis-copied titles (\"Dazed and Confusing "
    "(1993)\", \"Guffman (1996)\"); decoding in float32 instead of bfloat16 gives 161 valid instead of 159, so precision "
    "is not the cause. candidate_selection_12 (more copying practice: 12 shares of candidate selection in the same 1600 "
    "examples) names a candidate more often (0.840) but the head falls to 0.375 with fewer next-item examples. "
    "candidate_tokens_first (each candidate's item tokens before its title, the order the answer copies in) names a "
    "candidate as often (0.845) and picks the right one at 0.155 [0.105, 0.205] against 0.065, the first greedy row above "
    "chance (0.05); the head 0.425 against 0.450, within the CIs. A reading, not measured: the first answer token copies "
    "the word after some candidate's item tokens, so those tokens can steer which title is started, while in \"Title "
    "<item>\" they come after the title they describe. The CPU preset takes it.",
    "- Where the preset's greedy answers go (its make-main model, validation, 200 users): 169 name a candidate, 94 of "
    "them one in the last quarter of the 20-candidate list (18, 23 and 34 in the first three quarters): the LLM mostly "
    "copies a title near the end of the prompt, so the greedy choice is largely position (HR@1 0.155), where head-guided "
    "decoding reads the head. Shown 8 of the same candidates (the target and the first 7 others, in display order), as "
    "many answers name one (0.855 against 0.845; HR@1 0.310, chance 0.125), the last quarter still named most (64 of "
    "171): the list's length is not what makes answers invalid. The 31 invalid answers are titles blended from "
    "candidates (\"Beauty and the City (1995)\", \"Monty Python's Life of Python (1979)\", \"Dazed and Confined "
    "(1997)\") and twice \"SmolLM\", the name the chat template's default system prompt gives the assistant.",
    "- ranking_negatives_64: in bfloat16 the float32 item encoder is ~80% of what the phase-2 step costs beyond the bare "
    "LLM (benchmarks/README.md), and it encodes the head's 256 sampled items every step. With 64: the head 0.400 [0.340, "
    "0.470] against 0.425, NDCG@5 0.628 against 0.661 (within the CIs, lower on both), valid 0.895 against 0.845, and no "
    "minutes saved that this machine can show (13.7 against 12.6, on cores that drift 1.7x). Not taken.",
    "- phase1_480: phase 1 had run 120 steps of 16 (1.4 passes over the items' texts) and stopped while learning: its "
    "ITC loss 2.35 at the end against ln 16 = 2.77 for a batch of 16 (item->text recall@10 0.018, chance 0.006), the "
    "item-item loss still falling. With 480 steps: item->text recall@10 0.095 (0.024, 0.060, 0.107 at steps 120, 180, "
    "240), item-item recall@10 0.089 against 0.075 (the raw ALS vectors: 0.077), ITM still at its prior (loss 0.636). "
    "Phase 2 then starts higher (head 0.375 at step 0 against 0.350) and ends at 0.440 [0.375, 0.515] against 0.425, "
    "NDCG@5 0.683 against 0.661, greedy valid 0.875 [0.830, 0.915] against 0.845, greedy HR@1 0.160 against 0.155, "
    "full-catalog HR@10 0.120 against 0.155 (within the CIs, each of them). Phase 1 took 6.6 min instead of 1.7. The "
    "CPU preset takes it: the best head and valid ratio on this table, and item tokens that phase 1 aligned with text.",
    "- phase1_960: twice as long again (11.3 min of phase 1): item-item recall@10 0.103 (0.089 at 480 steps), item->text "
    "0.083; the head starts at 0.425, where 200 phase-2 steps of the 120-step preset ended, then dips (0.325 at step 50) "
    "and ends at 0.410 [0.350, 0.480], NDCG@5 0.661, below phase1_480 (0.440, 0.683); greedy valid 0.910 [0.865, 0.945], "
    "the first row above 0.9, greedy HR@1 0.140. Not taken: a lower head for 5 more minutes. A reading, not measured: "
    "phase 2 at its full learning rate undoes part of a strong start (tested by encoder_lr_960, below: it does not).",
    "- A system message instead of the chat template's default one (which names the assistant SmolLM, twice the answer), "
    "probed without training on candidate_tokens_first's make-main model (validation, 200 users, greedy): none 0.845 "
    "valid / 0.155 HR@1, \"You are a movie recommender.\" 0.805 / 0.155, the same plus \"Answer with exactly one title "
    "from the candidate list, copied exactly.\" 0.825 / 0.155, \"You are a helpful assistant.\" 0.850 / 0.170; the last "
    "quarter of the list still named most. The invalid answers stay invented or blended titles (\"Bridgens (1997)\", "
    "\"Dazed and Confined (1997)\"): an instruction does not make the frozen 135M LLM copy better, so no row was trained.",
    "- encoder_lr_960: phase1_960 with the item encoder at 1e-4 in phase 2 (encoder_learning_rate; the adapter and head "
    "at 3e-4). The curve 0.425 / 0.315 / 0.410 / 0.395 / 0.420 keeps the dip at step 50, so the dip is the new adapter "
    "and head learning, not the encoder forgetting phase 1; the head ends at 0.425 [0.365, 0.495] (phase1_960: 0.410), "
    "greedy valid 0.820 against 0.910, greedy HR@1 0.090 against 0.140: phase 2's answers need the encoder to move. "
    "Not taken.",
    "- Does the head lack the CF vectors' lengths? (phase1_480's model, validation, no training.) The item tokens keep "
    "them: a linear read of log ||cf|| has R^2 0.98 from the CF tokens after their LayerNorm, 0.99 from the Q-Former "
    "outputs, 0.98 from the LLM-space item tokens. In ALS space a candidate's length pays (benchmarks/cf_probe.py: "
    "cosine to the history's mean 0.460, the dot product 0.540). In the trained head it does not: its item prior spans "
    "0.12 logits (correlation 0.85 with log ||cf||), and multiplied by 0 / 1 / 2 / 4 / 8 the head ranks 0.445 / 0.440 / "
    "0.450 / 0.440 / 0.405; each candidate's cosine multiplied by exp(a L), L that linear read standardised (the dot "
    "product's form), ranks 0.380 / 0.325 / 0.290 at a = 0.25 / 0.5 / 1, and a L added (a = 1, 2) 0.410 / 0.385. The "
    "head already ranks by what popularity says through its LLM terms; no length lever is left in it.",
    "- ranking_negatives_all (the head's softmax over all 1681 items, E4SRec's): curve 0.375 / 0.320 / 0.425 / 0.445 / "
    "0.430, head 0.430 [0.370, 0.505], NDCG@5 0.669, greedy valid 0.850, greedy HR@1 0.185, 16.2 min of phase 2 against "
    "13.6: no better than 256 sampled items (0.440); not taken. ranking_loss_weight_3 (the ranking loss x3): the only "
    "curve without the step-50 dip (0.375 / 0.385 / 0.405 / 0.425 / 0.415), but it ends lower: head 0.410 [0.345, "
    "0.480], NDCG@5 0.667, valid 0.840, greedy HR@1 0.150; not taken. Every head row since cf_length ends at 0.41-0.45.",
    "- Greedy answers against the list's length, probed on phase1_480's make-main model (validation, 200 users, no "
    "training): shown 8 or 14 of each user's 20 candidates (the target and a seeded draw of the others, display order "
    "kept), 0.905 / 0.855 name one, against 0.835 with all 20 (greedy HR@1 0.310 / 0.210). Unlike the "
    "candidate_tokens_first model's probe above (0.855 with 8 against 0.845), this model names a candidate more often in "
    "shorter lists; the invalid answers' nearest candidates sit anywhere in the list (positions 0-19), and the valid "
    "answers spread over the four quarters (34 / 38 / 58 / 37). The other candidate-selection templates of phase 2 as the "
    "evaluation prompt, same model: valid 0.775 / 0.855 / 0.660 for templates 1 / 2 / 3 against 0.835 for template 0 "
    "(greedy HR@1 0.140 / 0.125 / 0.080): template 1's instruction after the list (\"Pick the candidate ... and give its "
    "title.\") does not help, so evaluation keeps template 0.",
    "- next_item_rank_only: the next-item prompts train the ranking head only (`ranking_only_tasks`; their answers, a "
    "title the prompt does not show, get no answer loss), on the reading that learning to invent the next title is what "
    "greedy answers repeat when they invent a candidate's. Head 0.410 [0.350, 0.480], NDCG@5 0.670, valid 0.840 against "
    "0.875, greedy HR@1 0.140, 11.7 min of phase 2: the reading is wrong; not taken (the option stays).",
    "- train_candidates_20: 20 candidates per training prompt, as in evaluation, instead of 8 (mean phase-2 prompt 217 "
    "tokens instead of 150): head 0.415 [0.350, 0.485], NDCG@5 0.667, valid 0.825 [0.775, 0.880], greedy HR@1 0.175, "
    "17.7 min of phase 2 against 13.6. Practice at the evaluation's length does not make answers name a candidate more "
    "often (as candidate_titles against candidate_titles_8 found before); not taken.",
    "- phase1_960_frozen_words: phase1_960 with the Q-Former's word embeddings frozen in phase 1 "
    "(`freeze_word_embeddings`; ITC's text side and ITG's output layer stay MiniLM's): 960 steps in 7.1 min of phase-1 "
    "training against 11.3, item->text recall@10 0.113 (phase1_480: 0.095, phase1_960: 0.083), item-item 0.097, ITG "
    "loss 2.49 (2.58). Phase 2 then ends where phase1_480 did: head 0.440 [0.380, 0.515], NDCG@5 0.668, valid 0.870, "
    "greedy HR@1 0.185; curve 0.380 / 0.340 / 0.380 / 0.430 / 0.440. A better phase 1 on its own metrics buys nothing "
    "downstream here, and phase1_960's valid 0.910 was not repeated; not taken (2.3 more minutes).",
    "- Why answers mis-copy a listed title: SmolLM2's BPE writes the first word of a turn without its leading space, and "
    "splits 563 of ml-100k's 1681 titles' first words otherwise than after a space (\" Toy\" against \"T\", \"oy\"; "
    "\" Brothers\" against \"Bro\", \"ther\", \"s\"); the other 1118 differ in their first token too (\" Heat\" "
    "against \"Heat\"). Listed as \"<item> Toy Story (1995)\", the title an answer must write is never in the prompt token "
    "for token, and copying goes astray from its first word. Probed on the float32 make-main model of phase1_480 "
    "(validation, the first 96 users, no training): listing the candidates as \"<item>Toy Story (1995)\" instead, so "
    "each title's tokens are the answer's, 0.927 of the greedy answers name a candidate against 0.844 (greedy HR@1 0.073 "
    "both; likelihood HR@1 0.094 against 0.115).",
    "- phase1_480_float32 is the CPU preset as `make main` trained it in float32 on the AVX2-only machine the next row "
    "ran on (test figures in the README), evaluated here on validation as the next row's reference (same users, same "
    "machine): head 0.435, valid 0.825, greedy HR@1 0.125. title_unspaced trains the same phase 2 on candidate lists "
    "without the space (`candidate_title_space: false`; the same phase-1 checkpoint): greedy valid 0.945 [0.910, "
    "0.975] against 0.825 [0.770, 0.875], the first row whose CI clears 0.9, and greedy HR@1 0.215 [0.160, 0.270] "
    "against 0.125, while the head stays where it was (0.425 against 0.435, NDCG@5 0.669 against 0.673; curve 0.395 / "
    "0.355 / 0.435 / 0.415 / 0.425). Phase 2 took 18.7 min in float32 against 19.1. The CPU preset takes it.",
    "- Where the item encoder loses the CF signal (benchmarks/encoder_probe.py on the aad55b2 make-main model, float32; "
    "validation, 200 users, no LLM): each candidate scored by its similarity to the mean of the user's last 10 items, "
    "dot product / cosine, at each stage: raw ALS vectors 0.540 / 0.460, the CF tokens after their projection and "
    "LayerNorm 0.380 / 0.415, the Q-Former outputs 0.395 / 0.365, the LLM-space item tokens 0.320 / 0.345 (the MLP "
    "adapter's, same preset, by hand: 0.405 / 0.500). A linear key and prior fit on every train (last 10 items -> next "
    "item) pair (97k; a softmax over the catalog, 600 steps of 512, seconds) read more: 0.475 / 0.515 (cosine / dot "
    "keys) from the raw ALS vectors, 0.495 / 0.500 from the CF tokens, 0.455 / 0.485 from the Q-Former outputs, 0.435 "
    "/ 0.435 from the LLM-space item tokens, where the trained phase-2 head, with ~6k ranking examples, reaches 0.425. "
    "Each stage keeps most of the signal for a read that sees every interaction.",
    "- ranking_warmup: the head's step-0 function (its item part; the LLM terms start at zero) reads no LLM state, so "
    "before phase 2 it is fit on those 97k pairs (`ranking_warmup_steps`; the key, prior and scale, lr 1e-3, batches "
    "of 256; on the phase-1 init 100 / 300 / 1000 / 3000 steps gave 0.465 / 0.490 / 0.490 / 0.490, lr 3e-3 0.475 / "
    "0.485 at 300 / 1000): 300 steps in 12.7 s, and phase 2 starts at 0.490, NDCG@5 0.708 (ALS user·item's HR@1 on "
    "these users) instead of 0.395. Phase 2 loses it: 0.360 at step 50, then 0.450 / 0.410 / 0.425, the head where "
    "title_unspaced ended (0.425), greedy HR@1 0.145 against 0.215 (phase 2's minutes include probes run beside it). "
    "On its checkpoints the item part alone (the LLM terms zeroed) ranks at 0.435 at step 50 and 0.400 at step 200: "
    "the answer loss moves the item tokens (a fresh adapter, the encoder) away from the key the warm-up fit, and the "
    "LLM terms, growing from zero, first take away (0.360 against 0.435) and in the end add 0.025. Refitting the key "
    "and prior after phase 2, with the LLM terms kept, breaks the head (0.080): those terms are tied to their key.",
    "- Two patches on ranking_warmup, tried and not kept (stopped early, so not rows): one more item-part step after "
    "every phase-2 step, against the item tokens as they are then (the head's item part kept fit to the moving "
    "tokens): 0.325 at step 50; the same with the head's LLM terms at 3e-5 instead of 3e-4: 0.295 / 0.385 / 0.375 at "
    "steps 50 / 100 / 150. The dip at step 50 is neither stale keys alone nor the LLM terms alone, and with slow LLM "
    "terms the head ends lower: those terms earn their place late in phase 2. The preset does not take the warm-up; "
    "the option stays (`ranking_warmup_steps`).",
    "- title_unspaced_bf16, ranking_pairs, ranking_pairs_encoder ran on a 2-core AMD EPYC with AVX512-BF16 (bfloat16 "
    "training and evaluation) from the phase 1 and data build of the make-main run that trained title_unspaced_bf16. "
    "ranking_pairs adds to the warm-up a pair loss (`ranking_pairs_per_step`): at every phase-2 step the head's item "
    "part also ranks 64 train (last 10 items -> next item) pairs, a softmax over their items and 256 sampled ones, "
    "through the item encoder and adapter as they train, so the answer loss cannot pull the item tokens away from what "
    "the head ranks by (the two earlier patches moved only the key). Curves (steps 0 / 50 / 100 / 150 / 200): "
    "ranking_pairs 0.490 / 0.395 / 0.485 / 0.460 / 0.445, ranking_pairs_encoder 0.490 / 0.380 / 0.470 / 0.455 / 0.455; "
    "title_unspaced_bf16 0.375 / - / 0.385 / - / 0.455 (steps 0 / 100 / 200).",
    "- On these first 200 users the three heads end alike (0.455 / 0.445 / 0.455), but over all 943 validation users "
    "(benchmarks/paired.py --users 943, ~1.3 min per model) they do not: title_unspaced_bf16 0.413 [0.382, 0.444], "
    "ranking_pairs and ranking_pairs_encoder 0.469 [0.439, 0.502] each, paired +0.056 [+0.029, +0.083] over the "
    "preset; ALS user·item 0.437 [0.406, 0.467], popularity 0.256. With the LLM terms zeroed, the item part alone ranks "
    "0.367 in the preset's head and 0.466 in ranking_pairs' (all 943 users): the pair loss keeps the item tokens' CF "
    "geometry through phase 2, and the LLM terms then add to it. The 200 users' CIs (about +-0.07) cannot see a "
    "lever of this size; the full-catalog HR@10 moves with it (0.210 against 0.155 on the 200).",
    "- The pair loss's gradient through the adapter cost the greedy answers: valid 0.865 [0.815, 0.910] against 0.985, "
    "greedy HR@1 0.085 against 0.220 (ranking_pairs). Stopped at the adapter (ranking_pairs_encoder; the default, "
    "`ranking_pairs_train_adapter: false`), the pairs train the encoder and the head's item part while the adapter, "
    "which places the item tokens where the frozen LLM reads them, learns from the answers only: valid 0.955 [0.920, "
    "0.980], greedy HR@1 0.125 (still below the preset's 0.220), the head as in ranking_pairs. Phase 2 took 12.9 min "
    "against 10.4 (the pairs' item tokens through the float32 encoder). The CPU preset takes ranking_pairs_encoder.",
]
METRICS = [
    ("HR@1 (likelihood, sum)", "ranking", "hr@1"),
    ("HR@1 (likelihood, mean)", "ranking_mean", "hr@1"),
    ("HR@1 (likelihood, calibrated)", "ranking_calibrated", "hr@1"),
    ("HR@1 (ranking head)", "ranking_head", "hr@1"),
    ("NDCG@5 (ranking head)", "ranking_head", "ndcg@5"),
    ("HR@10 (head, full catalog)", "ranking_head", "full_catalog_hr@10"),
    ("valid ratio (greedy)", "generation", "valid_ratio"),
    ("HR@1 (greedy)", "generation", "hr@1"),
]


def suffix(overrides: dict) -> str:
    return "".join(f"_{k}={v}" for k, v in sorted(overrides.items()))


def data_dir(out: Path, preset: dict, overrides: dict) -> Path:
    """The preset's data build in `out/data`, or one with `overrides` beside it."""
    from training.data import build_dataset

    folder = out / ("data" + suffix(overrides))
    if not (folder / "stats.json").exists():
        # candidate_tokens_first and candidate_title_space joined the preset with their rows: rows that do not ask for them ran without
        settings = {k: v for k, v in {**preset["data"], "candidate_tokens_first": False, "candidate_title_space": True, **overrides}.items() if k != "dataset"}
        build_dataset(folder, dataset="ml-100k", **settings)
    return folder


# data options that change phase-2 prompts only: rows that differ in them share a phase 1 (the builds' CF
# vectors are equal; the folders of older rows still name their candidate-list options)
PHASE2_DATA = {"num_train_candidates", "candidate_title_space"}


def phase1(out: Path, preset: dict, overrides: dict, data: dict) -> Path:
    """The preset's phase 1 in `out/phase1`, or one with phase-1 or data `overrides` beside it."""
    from training.config import load_config
    from training.pretrain import PretrainConfig, pretrain

    data = {k: v for k, v in data.items() if k not in PHASE2_DATA}
    folder = out / ("phase1" + suffix(overrides) + suffix(data))
    if not (folder / "phase1_results.json").exists():
        # keep_cf_length joined the preset with row cf_length, 480 steps with row phase1_480: rows that do not ask for them ran without
        values = {**preset["pretrain"], "keep_cf_length": False, "max_steps": 120, **overrides, "data_dir": str(data_dir(out, preset, data)), "output_dir": str(folder)}
        pretrain(load_config(PretrainConfig, values))
    return folder / "final"


def run_row(name: str, out: Path, preset: dict, users: int, trained: Path | None = None) -> dict:
    """Trains the row's phase 2 (or takes the already trained phase-2 folder `trained`, e.g. the
    main job's `runs/ml100k/phase2` for the "preset" row) and evaluates it on validation."""
    from modeling_ilm import ILMForConditionalGeneration, ILMProcessor
    from training import assets
    from training.config import load_config
    from training.evaluate import evaluate_model
    from training.finetune import FinetuneConfig, finetune

    if (out / name / "row.json").exists():
        return json.loads((out / name / "row.json").read_text())
    row = ROWS[name]
    data_overrides = row.data if row.titled else {**BARE_CANDIDATES["data"], **row.data}
    finetune_overrides = row.finetune if row.titled else {**BARE_CANDIDATES["finetune"], **row.finetune}
    row_dir = trained or out / name
    data = data_dir(out, preset, data_overrides)
    if trained is None:
        init = phase1(out, preset, row.pretrain, data_overrides)
        # the preset's later levers (bf16, the item prior, the ranking warm-up and pair loss) undone: each row asks for those it ran with
        values = {**preset["finetune"], "bf16": False, "ranking_item_prior": False, "ranking_warmup_steps": 0, "ranking_pairs_per_step": 0, "init": str(init), **finetune_overrides, "data_dir": str(data), "output_dir": str(row_dir), "name": name}
        summary = finetune(load_config(FinetuneConfig, values))
    else:
        summary = json.loads((trained / "phase2_results.json").read_text())
    model = assets.inference_model(ILMForConditionalGeneration.from_pretrained(row_dir / "model"), "cpu", assets.dtype(row.dtype))
    processor = ILMProcessor.from_pretrained(row_dir / "model")
    start = time.time()
    results = evaluate_model(model, processor, data, name=name, split="validation", users=users, sections=row.sections)
    record = {
        "name": name,
        "adds": row.adds,
        "overrides": {"finetune": finetune_overrides, "pretrain": row.pretrain, "data": data_overrides},
        "phase2_min": round(summary["time_s"] / 60, 1),
        "eval_min": round((time.time() - start) / 60, 1),
        "tokens_per_s": summary["train_tokens_per_second"],
        "results": results["models"][name],
        "curve": [e for e in summary["log_history"] if "eval_validation_hr@1_head" in e],
    }
    (out / name).mkdir(parents=True, exist_ok=True)
    (out / name / "row.json").write_text(json.dumps(record, indent=2))
    return record


def baselines(out: Path, preset: dict, users: int, recorded: dict) -> dict:
    """Popularity, ALS and the text-only LLM on the ladder's protocol: they do not depend on any
    row's training, so the recorded ones are reused."""
    from training.evaluate import evaluate_baselines

    if recorded:
        return recorded
    path = out / "baselines.json"
    if not path.exists():
        results = evaluate_baselines(data_dir(out, preset, {}), split="validation", users=users, sections=LIKELIHOOD)
        path.write_text(json.dumps(results["models"], indent=2))
    return json.loads(path.read_text())


def table_results(results: dict) -> dict:
    """The sections and metrics the table shows (what ladder.json keeps of a row's results)."""
    kept = {}
    for _, section, metric in METRICS:
        if metric in results.get(section, {}):
            kept.setdefault(section, {})[metric] = results[section][metric]
    return kept


def cell(results: dict, section: str, metric: str) -> str:
    value = results.get(section, {}).get(metric)
    if not value or value["value"] is None:
        return "–"
    ci = value.get("ci95")
    return f"{value['value']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value['value']:.3f}"


def write_report(rows: list, base: dict, users: int):
    lines = [
        "# Quality ladder (validation split)",
        "",
        f"`python benchmarks/quality.py` on 2 CPU cores: ml-100k, CPU preset, the first {users} validation users, "
        "20 candidates each (the held-out item + 19 never-seen items), 95% bootstrap CIs. Rows share the phase-1 "
        "checkpoint of their Q-Former depth; choices are made on this table, the test split is evaluated once (README). "
        "Minutes are wall time on a machine that sometimes ran another job beside the row (then up to 2x slower).",
        "",
        "| row | what it adds | " + " | ".join(m[0] for m in METRICS) + " | phase 2 (min) | eval (min) |",
        "|---|---|" + "---|" * (len(METRICS) + 2),
    ]
    names = {"pop": "Popularity", "als": "ALS (user·item)", "text": "text-only SmolLM2-135M"}
    for key, label in names.items():
        if key in base:
            lines.append(f"| {label} | baseline | " + " | ".join(cell(base[key], s, m) for _, s, m in METRICS) + " | – | – |")
    for row in rows:
        cells = " | ".join(cell(row["results"], s, m) for _, s, m in METRICS)
        lines.append(f"| {row['name']} | {row['adds']} | {cells} | {row['phase2_min']} | {row['eval_min']} |")
    curves = [row for row in rows if row["curve"]]
    if curves:
        lines += ["", "Learning curve (validation HR@1 of the ranking head against phase-2 steps): `learning_curve.png`", ""]
        for row in curves:
            points = ", ".join(f"{e['step']}: {e['eval_validation_hr@1_head']:.3f}" for e in row["curve"])
            lines.append(f"- {row['name']}: {points}")
        plot_curves(curves, HERE / "learning_curve.png")
    lines += ["", "## Why these levers", "", *DIAGNOSTICS]
    (HERE / "quality.md").write_text("\n".join(lines) + "\n")


def plot_curves(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 6.5))
    for i, row in enumerate(rows):
        steps = [e["step"] for e in row["curve"]]
        style = ("-", "--", ":")[i // 10 % 3]  # the colour cycle repeats every 10 rows
        ax.plot(steps, [e["eval_validation_hr@1_head"] for e in row["curve"]], marker="o", linestyle=style, label=row["name"])
    ax.set(xlabel="phase-2 step (batch 8)", ylabel="validation HR@1 (ranking head, 20 candidates)", title="Learning curve")
    ax.axhline(0.05, color="grey", linestyle=":", label="chance")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside the axes: one entry per row
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/ladder")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma list of {','.join(ROWS)}")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--trained", action="append", default=[], metavar="NAME=DIR", help="a phase-2 folder already trained as row NAME")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    names = args.rows.split(",")
    unknown = [name for name in names if name not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}: choose from {','.join(ROWS)}")
    out = Path(args.out)
    preset = yaml.safe_load(PRESET.read_text())
    preset["finetune"]["curve_steps"] = 50  # the ladder's curves keep 50-step resolution (the main job measures every 100)
    ladder = json.loads(LADDER.read_text()) if LADDER.exists() else {"baselines": {}, "rows": {}}
    base = {key: table_results(results) for key, results in baselines(out, preset, args.users, ladder["baselines"]).items()}
    trained = {name: Path(folder) for name, folder in (item.split("=", 1) for item in args.trained)}
    for name in names:
        record = run_row(name, out, preset, args.users, trained.get(name))
        ladder["rows"][name] = {**record, "results": table_results(record["results"])}
        LADDER.write_text(json.dumps({"baselines": base, "rows": ladder["rows"]}, indent=1) + "\n")  # after each row: hours of work
    write_report([ladder["rows"][name] for name in ROWS if name in ladder["rows"]], base, args.users)
    print((HERE / "quality.md").read_text())


if __name__ == "__main__":
    main()
