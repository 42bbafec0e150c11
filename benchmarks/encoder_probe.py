"""Where along a trained ILM's item encoder the item-to-item CF signal goes, and how much of it a
linear read fit on every train interaction gets back (benchmarks/quality.md, "Where the item
encoder loses the CF signal").

    python benchmarks/encoder_probe.py --data runs/ml100k/data --model runs/ml100k/model [--split validation]

For each stage (raw CF vectors, CF tokens, Q-Former outputs, LLM-space item tokens; the MLP
adapter has only the first and last), each candidate is scored by its similarity to the mean of the
user's last `history_len` items: dot product and cosine as they are, then through a linear key
(LayerNorm + Linear to 128) and a linear prior fit with a softmax over the catalog on every train
(history -> next item) pair (`training.ranking_warmup.next_item_pairs`). No LLM is run.
"""

import argparse

import numpy as np
import torch
from torch import nn

from modeling_ilm import ILMForConditionalGeneration, ILMProcessor
from training.evaluate.protocol import load_protocol
from training.evaluate.recommendation import ranking_section
from training.ranking_warmup import history_means, next_item_pairs


@torch.no_grad()
def stages(model) -> dict:
    """Stage name -> one vector per catalog item (CF-table rows), query tokens averaged."""
    cf = model.cf_embeddings.items.weight.float()
    found = {"raw CF vectors": cf}
    encoder = model.item_encoder
    if encoder is not None:
        found["CF tokens (projection + LayerNorm)"] = encoder.cf_tokens(cf).mean(1)
        found["Q-Former outputs"] = encoder(cf, mode="query").last_hidden_state.mean(1)
    found["LLM-space item tokens"] = model.get_item_tokens(item_ids=torch.arange(model.config.num_items)).float().mean(1)
    return found


def fit_linear_read(vectors, histories, targets, cosine, steps, seed=0):
    """score(history rows) -> (batch, num_items): a key and a prior fit on the train pairs."""
    torch.manual_seed(seed)
    key = nn.Sequential(nn.LayerNorm(vectors.shape[1]), nn.Linear(vectors.shape[1], 128))
    prior = nn.Sequential(nn.LayerNorm(vectors.shape[1]), nn.Linear(vectors.shape[1], 1))
    scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))
    optimizer = torch.optim.AdamW([*key.parameters(), *prior.parameters(), scale], lr=1e-3)

    def score(rows):
        queries, keys = key(history_means(vectors, rows)), key(vectors)
        if cosine:
            scores = scale.clamp(max=float(np.log(100))).exp() * nn.functional.normalize(queries, dim=-1) @ nn.functional.normalize(keys, dim=-1).T
        else:
            scores = queries @ keys.T / 128**0.5
        return scores + prior(vectors).squeeze(-1)

    for _ in range(steps):
        batch = torch.randint(len(targets), (512,))
        loss = nn.functional.cross_entropy(score(histories[batch]), targets[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return score


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="runs/ml100k/data")
    parser.add_argument("--model", default="runs/ml100k/model")
    parser.add_argument("--split", default="validation", choices=["validation", "test"])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--fit-steps", type=int, default=600)
    args = parser.parse_args(argv)
    protocol = load_protocol(args.data, split=args.split, users=args.users)
    model = ILMForConditionalGeneration.from_pretrained(args.model).eval()
    processor = ILMProcessor.from_pretrained(args.model)
    histories, targets = next_item_pairs(args.data, processor, protocol.history_len)

    def section(score_rows):
        def score(user_id, candidates):
            rows = processor.rows(protocol.history(user_id))
            with torch.no_grad():
                return score_rows(torch.tensor([rows + [-1] * (protocol.history_len - len(rows))]))[0, processor.rows(candidates)].numpy()
        values = ranking_section(score, protocol, desc="probe")["hr@1"]
        return f"{values['value']:.3f} [{values['ci95'][0]:.3f}, {values['ci95'][1]:.3f}]"

    print(f"{args.split}, first {len(protocol.users)} users, {protocol.num_candidates} candidates, {len(targets)} train pairs; HR@1 with 95% CIs\n")
    print("| stage | dot with the history's mean | cosine with it | linear read fit on the train pairs (cosine) | (dot) |\n|---|---|---|---|---|")
    for name, vectors in stages(model).items():
        units = nn.functional.normalize(vectors, dim=-1)
        cells = [
            section(lambda rows, v=vectors: history_means(v, rows) @ v.T),
            section(lambda rows, v=vectors, u=units: nn.functional.normalize(history_means(v, rows), dim=-1) @ u.T),
            *(section(fit_linear_read(vectors, histories, targets, cosine, args.fit_steps)) for cosine in (True, False)),
        ]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
