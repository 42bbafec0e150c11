"""The main job: ml-100k -> CF -> phase 1 -> phase 2 -> evaluation -> a saved model with its card.

    python -m training.main --preset cpu --out runs/ml100k

Each stage is skipped when its output already exists, and phases 1 and 2 resume from their last
checkpoint, so a killed job picks up where it stopped. Prints the time split and a short
multi-turn demo with item tokens at the end.
"""

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import torch

from training import assets
from training.atomic import write_text_atomic
from training.config import read_config_file

logger = logging.getLogger("training.main")
PRESETS = Path(__file__).parent / "configs"


def load_preset(preset: str) -> dict:
    path = Path(preset) if preset.endswith((".yaml", ".yml")) else PRESETS / f"{preset}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"No preset {preset!r}: use cpu, gpu, or a YAML file ({sorted(p.stem for p in PRESETS.glob('*.yaml'))}).")
    return read_config_file(path)


def stage(name, timings):
    """Context manager that logs a stage and records its wall time."""

    class Stage:
        def __enter__(self):
            logger.info("=== %s ===", name)
            self.start = time.time()

        def __exit__(self, *exc):
            timings[name] = round(time.time() - self.start, 1)
            logger.info("=== %s done in %.1fs ===", name, timings[name])

    return Stage()


def run(preset: str, out: str, seed: int = 0) -> dict:
    from training.config import load_config
    from training.data import build_dataset
    from training.finetune import FinetuneConfig, finetune
    from training.pretrain import PretrainConfig, pretrain

    settings = load_preset(preset)
    out = Path(out)
    data_dir, phase1_dir, phase2_dir, model_dir = out / "data", out / "phase1", out / "phase2", out / "model"
    timings = {}
    section = lambda phase, **paths: {**settings.get(phase, {}), **{k: str(v) for k, v in paths.items()}}  # noqa: E731

    with stage("assets", timings):
        llm_path, qformer_path = assets.default_llm_path(), assets.default_qformer_path()
        logger.info("frozen LLM: %s | Q-Former init: %s", llm_path, qformer_path)

    with stage("data + CF", timings):
        if not (data_dir / "stats.json").exists():
            data_settings = dict(settings.get("data", {}))
            build_dataset(data_dir, dataset=data_settings.pop("dataset", "ml-100k"), **data_settings)
        stats = json.loads((data_dir / "stats.json").read_text())

    with stage("phase 1", timings):
        if not (phase1_dir / "phase1_results.json").exists():
            pretrain(load_config(PretrainConfig, section("pretrain", data_dir=data_dir, output_dir=phase1_dir)))
        phase1 = json.loads((phase1_dir / "phase1_results.json").read_text())

    with stage("phase 2", timings):
        if not (phase2_dir / "phase2_results.json").exists():
            variant = settings["pretrain"].get("variant", "IT-II")
            finetune(load_config(FinetuneConfig, section(
                "finetune", data_dir=data_dir, output_dir=phase2_dir, init=phase1_dir / "final", name=f"ILM ({variant})"
            )))
        phase2 = json.loads((phase2_dir / "phase2_results.json").read_text())

    with stage("evaluation", timings):
        results = evaluate_stage(settings.get("evaluate", {}), phase2_dir / "model", data_dir, out / "eval", phase2["name"])

    with stage("model folder + card", timings):
        shutil.copytree(phase2_dir / "model", model_dir, dirs_exist_ok=True)
        training_info = describe_training(settings, stats, phase1, phase2, timings)
        (model_dir / "training_info.json").write_text(json.dumps(training_info, indent=2))
        (model_dir / "results.json").write_text(json.dumps(results, indent=2))
        shutil.copy(phase1_dir / "training_curves.png", model_dir / "training_curves_phase1.png")
        write_card(model_dir, results, training_info, phase2["name"])

    with stage("demo", timings):
        demo(model_dir, data_dir)

    write_text_atomic(out / "timings.json", json.dumps(timings, indent=2))
    print("\n| stage | seconds |\n|---|---|")
    for name, seconds in timings.items():
        print(f"| {name} | {seconds} |")
    print(f"| total | {round(sum(timings.values()), 1)} |")
    print(f"\nSaved model: {model_dir} (AutoModel.from_pretrained(..., trust_remote_code=True))")
    return {"timings": timings, "results": results}


def evaluate_stage(settings, model_dir, data_dir, eval_dir, name):
    from training.evaluate import evaluate_baselines, evaluate_model, merge_results, write_report
    from modeling_ilm import ILMForConditionalGeneration, ILMProcessor

    if (eval_dir / "results.json").exists():
        return json.loads((eval_dir / "results.json").read_text())
    device = assets.device()
    model = assets.inference_model(ILMForConditionalGeneration.from_pretrained(model_dir), device, assets.dtype(settings.get("dtype", "float32"), device))
    processor = ILMProcessor.from_pretrained(model_dir)
    common = dict(users=settings.get("users"), bootstrap=settings.get("bootstrap", 1000))
    if settings.get("sections"):
        common["sections"] = settings["sections"]
    ours = evaluate_model(model, processor, data_dir, name=name, alignment_rows=settings.get("alignment_rows"), **common)
    parts = [ours]
    if settings.get("baselines"):
        parts.insert(0, evaluate_baselines(data_dir, baselines=settings["baselines"], llm=model.language_model, tokenizer=processor.tokenizer, **common))
    results = merge_results(parts)
    write_report(results, eval_dir)
    return results


def describe_training(settings, stats, phase1, phase2, timings) -> dict:
    """What the model card says about how the model was made."""
    return {
        "preset": settings,
        "data": {"name": "MovieLens-100K (recbole 1.2.1 copy)", **stats.get("counts", {})},
        "cf": json.loads((Path(stats.get("out", "")) / "cf" / "cf_config.json").read_text()) if stats.get("out") else None,
        "phase1": {"variant": phase1["variant"], "losses": phase1["loss_weights"], "steps": phase1["steps"], "time_s": phase1["time_s"], "metrics": phase1["metrics"]},
        "phase2": {"tasks": phase2["tasks"], "steps": phase2["steps"], "time_s": phase2["time_s"], "final_train_loss": phase2["final_train_loss"]},
        "hardware": torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)",
        "qformer_init": "sentence-transformers/all-MiniLM-L6-v2",
        "timings_s": timings,
    }


def write_card(model_dir, results, training_info, name):
    from model_cards import write_model_card

    write_model_card(model_dir, results=results, training_info=training_info, model_name=name)


def demo(model_dir, data_dir):
    """A short conversation where movies are item tokens, printed. Answers are decoded under the
    catalog's title trie, so each names a real movie; with a ranking head, the recommendation follows
    the head's scores (the movies already named left out), and two test users (user token + history)
    get the head's top 5 and a guided answer."""
    from modeling_ilm import ILMForConditionalGeneration, ILMProcessor
    from modeling_ilm.configuration_ilm import ITEM_TOKEN
    from training.evaluate import load_protocol
    from training.evaluate.lm import ChatModel
    from training.evaluate.prompts import NEXT_ITEM_TEMPLATE, recommendation_prompt

    model = ILMForConditionalGeneration.from_pretrained(model_dir).to(assets.device()).eval()
    processor = ILMProcessor.from_pretrained(model_dir)
    star_wars = [i for i in ("50", "181", "172") if i in processor._index["item"]]  # the trilogy in ml-100k
    turns = [
        ("I liked " + ", ".join([ITEM_TOKEN] * len(star_wars)) + ". What movie should I watch next?", star_wars),
        ("Thanks. And what movie is <item>?", [processor.catalog["items"][0]["item_id"]]),
    ]
    chat, item_ids = [], []
    print("\n--- demo: each <item> is one movie's item tokens; answers are decoded among catalog titles ---")
    for turn, (text, ids) in enumerate(turns):
        chat.append({"role": "user", "content": text})
        item_ids += ids
        inputs = processor(messages=chat, item_ids=item_ids).to(model.device)
        scores = None
        if turn == 0 and model.item_scorer is not None:  # a recommendation: follow the ranking head
            scores = model.score_items(**inputs)[:1].float()
            scores[0, processor.rows(item_ids)] = float("-inf")  # not what the user already named
        answer = guided_answer(model, processor, inputs, scores)
        chat.append({"role": "assistant", "content": answer})
        print(f"user: {text}   (<item> = {'; '.join(processor.item(i)['title'] for i in ids)})")
        print(f"assistant: {answer}")
    if model.item_scorer is None:
        return
    protocol = load_protocol(data_dir, split="test", users=2)
    chat_model = ChatModel(model, processor)
    for user_id in protocol.users:
        prompt = recommendation_prompt(protocol, user_id, NEXT_ITEM_TEMPLATE, with_candidates=False)
        scores = chat_model.rank(prompt)
        scores[processor.rows(protocol.histories[user_id])] = float("-inf")
        top = [processor.catalog["items"][row]["title"] for row in scores.argsort()[::-1][:5]]
        recent = "; ".join(protocol.titles[i] for i in protocol.history(user_id)[-3:])
        answer = guided_answer(model, processor, chat_model.encode([prompt]), torch.from_numpy(scores)[None])
        print(f"user {user_id} (recently: {recent}) -> answer: {answer} | ranking head top 5: {' | '.join(top)}")


def guided_answer(model, processor, inputs, scores=None, max_new_tokens=32) -> str:
    """Greedy answer among the catalog's titles; with `scores` (`(1, num_items)`, the ranking head's,
    -inf for items left out), the decoding follows them (see `title_constraint`)."""
    from modeling_ilm.constrained_decoding import GUIDE_WEIGHT

    constraint = processor.title_constraint(inputs["input_ids"], scores=scores, score_weight=GUIDE_WEIGHT)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, logits_processor=constraint)
    return processor.decode(output[0, inputs["input_ids"].shape[1] :]).strip()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", help="cpu, gpu, or a YAML file with data/pretrain/finetune/evaluate sections")
    parser.add_argument("--out", default="runs/ml100k")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(args.preset, args.out)


if __name__ == "__main__":
    main()
