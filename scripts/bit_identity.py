"""Before/after check for refactors: logits, losses, reloads and generation of the tests' tiny models.

    python scripts/bit_identity.py save before.safetensors      # on the commit before the change
    python scripts/bit_identity.py compare before.safetensors   # after it: every tensor must be equal

Records phase-1's five losses, phase-2 logits / loss / ranking-head scores, the logits of a full and a
light reload, the item tokens of a phase-1 checkpoint loaded into phase 2, and a greedy generation.
Exact equality holds on one machine (CPU kernels differ between machines), so run both sides here.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' tiny components
import conftest  # noqa: E402
import test_pretraining  # noqa: E402
from tiny import CATALOG  # noqa: E402

from modeling_ilm import ILMForConditionalGeneration, ILMProcessor  # noqa: E402


class TmpFactory:  # what the session fixtures are given by pytest
    def mktemp(self, name):
        return Path(tempfile.mkdtemp(prefix=name))


@torch.no_grad()
def record() -> dict:
    components = conftest.tiny_components.__wrapped__(TmpFactory())
    out = {}
    phase1 = test_pretraining.build(components).eval()
    losses = phase1(**test_pretraining.batch())
    out.update({f"phase1_{name}": getattr(losses, f"loss_{name}") for name in test_pretraining.ALL_LOSSES})

    processor = ILMProcessor.from_components(components["llm"], catalog=CATALOG, num_query_tokens=2)
    torch.manual_seed(0)
    model = ILMForConditionalGeneration.from_components(
        components["llm"], components["bert"], item_token_id=processor.item_token_id, user_token_id=processor.user_token_id,
        num_query_tokens=2, item_embeddings=torch.randn(6, 8), user_embeddings=torch.randn(4, 8),
    )
    model.enable_ranking_head(ranking_dim=8)
    model.eval()
    chat = [{"role": "user", "content": "user <user> liked <item> . what movie is <item> ?"}, {"role": "assistant", "content": "heat"}]
    batch = processor(messages=chat, item_ids=["3", "1"], user_ids=["2"], return_labels=True, add_generation_prompt=False)
    result = model(**batch)
    out["phase2_logits"], out["phase2_loss"] = result.logits, result.loss
    prompt = {k: batch[k] for k in ("input_ids", "attention_mask", "item_ids", "user_ids")}
    out["phase2_scores"] = model.score_items(**prompt)
    folder = Path(tempfile.mkdtemp())
    model.save_pretrained(folder / "full")
    model.save_pretrained(folder / "light", include_language_model=False)
    for kind in ("full", "light"):
        out[f"reloaded_{kind}_logits"] = ILMForConditionalGeneration.from_pretrained(folder / kind).eval()(**batch).logits
    phase1.save_pretrained(folder / "phase1")
    out["phase1_into_phase2_tokens"] = ILMForConditionalGeneration.from_pretrained(folder / "phase1").get_item_tokens(torch.tensor([0, 1]))
    out["greedy"] = model.generate(**prompt, max_new_tokens=4, do_sample=False).float()
    return {name: tensor.detach().contiguous() for name, tensor in out.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["save", "compare"])
    parser.add_argument("file")
    args = parser.parse_args(argv)
    now = record()
    if args.action == "save":
        save_file(now, args.file)
        print(f"saved {len(now)} tensors to {args.file}")
        return
    before = load_file(args.file)
    differ = [name for name in before if name not in now or not torch.equal(before[name], now[name])]
    print(f"{len(before) - len(differ)} of {len(before)} tensors bit-identical" + (f"; differ: {differ}" if differ else ""))
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
