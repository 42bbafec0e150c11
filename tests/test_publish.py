"""Model cards and Hub publishing on tiny random models: the card's metadata and body, the assembled
folder, loading it by repo id from an offline Hugging Face cache in a process without the package
(full and light folders), and clean failures without a token."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import ModelCard, constants
from huggingface_hub.errors import HfHubHTTPError
from tiny import CATALOG
from test_modeling import CHATS, ITEMS, QUERIES, USERS, build

from model_cards import build_model_card, write_model_card
from model_cards.generate import DEFAULT_LLM_ID, DEFAULT_QFORMER_ID, METRIC_NAMES, pick_model_name
from modeling_ilm import ILMProcessor
from training import publish as publish_module
from training.publish import PublishError, assemble, lay_into_hf_cache, publish, run_without_package, validate

FIXTURE = Path(__file__).parent / "fixtures" / "results.json"
RESULTS = json.loads(FIXTURE.read_text())
OWN = "ILM (IT-II)"
TRAINING_INFO = {
    "preset": "cpu",
    "hardware": "16 CPU cores",
    "qformer_init": "default",
    "data": {"name": "ml-100k (recbole==1.2.1)", "users": 943, "items": 1681, "interactions": 99991},
    "cf": {"method": "ALS (implicit)", "dim": 64, "iterations": 15, "regularization": 0.05},
    "phase1": {"losses": ["itc", "itm", "itg", "item_item"], "steps": 1200, "time_s": 845.0},
    "phase2": {"tasks": ["title", "genre", "next_item"], "steps": 900},
}
SNIPPET_CHAT = [{"role": "user", "content": "What movie is <item>?"}]
LIGHT_LLM_ID = "tiny-org/tiny-llm"


@pytest.fixture(scope="module")
def processor(tiny_components):
    return ILMProcessor.from_components(tiny_components["llm"], catalog=CATALOG, num_query_tokens=QUERIES)


@pytest.fixture(scope="module")
def model(tiny_components, processor):
    return build(tiny_components, processor)


@pytest.fixture(scope="module")
def folders(model, processor, tmp_path_factory):
    """A full folder (with results, training info and curves, as training writes them) and a light
    folder whose frozen LLM is named by a Hub id."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = tmp_path_factory.mktemp("models")
    full, light = root / "full", root / "light"
    model.save_pretrained(full)
    processor.save_pretrained(full)
    shutil.copy(FIXTURE, full / "results.json")
    (full / "training_info.json").write_text(json.dumps(TRAINING_INFO))
    plt.imsave(full / "training_curves.png", [[0.0, 1.0]])
    (full / "checkpoint-10").mkdir()  # Trainer leftovers: a subfolder with pickles is left out
    torch.save({"step": 10}, full / "checkpoint-10" / "optimizer.pt")
    model.config.text_model_name_or_path = LIGHT_LLM_ID
    model.save_pretrained(light, include_language_model=False)
    processor.save_pretrained(light)
    return {"full": full, "light": light}


@pytest.fixture(scope="module")
def published(folders, tmp_path_factory):
    root = tmp_path_factory.mktemp("published")
    return {
        kind: Path(publish(folder, f"org/{kind}", dry_run=True, out=root / kind, model_name=OWN))
        for kind, folder in folders.items()
    }


def copy_with_config(folder, target, **changes) -> Path:
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns("checkpoint-*"))
    config = json.loads((target / "config.json").read_text())
    config.update(changes)
    (target / "config.json").write_text(json.dumps(config))
    return target


def cell(entry) -> str:
    low, high = entry["ci95"]
    return f"{entry['value']:.4f} [{low:.4f}, {high:.4f}]"


# --- the card --------------------------------------------------------------------------------------


def test_card_metadata_parses_back_with_the_results(folders, tmp_path):
    path = tmp_path / "README.md"
    build_model_card(folders["light"], FIXTURE, repo_id="org/light", license="mit").save(path)
    data = ModelCard.load(path).data
    meta = data.to_dict()
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert {"ilm", "recommendation", "item-language-model", "collaborative-filtering", "q-former", "custom_code"} <= set(meta["tags"])
    assert meta["license"] == "mit" and meta["datasets"] == ["movielens-100k"]
    assert meta["base_model"] == [LIGHT_LLM_ID]  # the Q-Former init is not recorded without training_info
    own = RESULTS["models"][OWN]
    expected = {("20-candidate", m): e["value"] for m, e in own["ranking"].items()}
    for templates in ("seen", "unseen"):
        expected |= {(f"alignment-{templates}-templates", m): e["value"] for m, e in own["alignment"][templates].items()}
    got = {(r.dataset_config, r.metric_type): r.metric_value for r in data.eval_results}
    assert got == expected
    ranking = [r for r in data.eval_results if r.dataset_config == "20-candidate"]
    assert all(r.dataset_split == "test" and r.dataset_args["num_candidates"] == 20 for r in ranking)


def test_card_body_has_usage_protocol_and_baselines(folders):
    card = build_model_card(folders["light"], RESULTS, repo_id="org/light")
    text = card.text
    assert 'AutoModel.from_pretrained("org/light", trust_remote_code=True)' in text
    assert 'AutoProcessor.from_pretrained("org/light", trust_remote_code=True)' in text
    assert 'processor(messages=[{"role": "user", "content": "What movie is <item>?"}], item_ids=["1"])' in text
    assert "model.generate(**inputs, max_new_tokens=32)" in text and "processor.batch_decode" in text
    assert "KeyError" in text and "item_embeds=" in text
    assert "6 movie ids and 4 user ids" in text and "`1` Toy Story (1995)" in text
    assert "19 movies the user never interacted with" in text and "1/log2(1 + rank)" in text
    for name, entry in RESULTS["models"].items():  # every model in the ranking table, CIs included
        label = f"**{name}**" if name == OWN else name
        assert f"| {label} | {cell(entry['ranking']['hr@1'])} | {cell(entry['ranking']['ndcg@5'])} |" in text
    header = "| Model | " + " | ".join(METRIC_NAMES[m] for m in RESULTS["models"][OWN]["alignment"]["unseen"]) + " |"
    assert header in text
    assert "light checkpoint" in text and f"`{LIGHT_LLM_ID}`" in text
    assert "text-only prompts give exactly the base LLM's logits (measured: max |logit difference| = 0)" in text
    assert "LoRA" not in text and "training_curves.png" not in text
    assert text.count("not recorded") == 7  # every training row, none of which the light folder has


def test_card_training_info_curves_defaults_and_lora(folders, tmp_path):
    folder = copy_with_config(
        folders["full"], tmp_path / "m",
        text_model_name_or_path="/root/.cache/ilm/SmolLM2-135M-Instruct", lora_config={"r": 8, "lora_alpha": 16},
    )
    card = build_model_card(folder)  # results.json and training_info.json from the folder
    assert card.data.base_model == [DEFAULT_LLM_ID, DEFAULT_QFORMER_ID]
    text = card.text
    assert "![training curves](training_curves.png)" in text
    assert "| Phase 1 (item encoder) | losses: itc, itm, itg, item_item; steps: 1,200; time: 14.1 min (845 s) |" in text
    assert "| Phase 2 (alignment) | tasks: title, genre, next_item; steps: 900; time: not recorded |" in text
    assert "| CF embeddings | method: ALS (implicit); dim: 64; iterations: 15; regularization: 0.05 |" in text
    assert "943 users" in text and "| Hardware | 16 CPU cores |" in text
    assert "dequantized" in text  # the embedded default LLM is not the Hub's exact weights
    assert "enables LoRA on the LLM** (r=8, lora_alpha=16)" in text and "no longer reproduce the base LLM" in text
    hub = copy_with_config(folders["full"], tmp_path / "hub", text_model_name_or_path="some-org/some-llm")
    info = dict(TRAINING_INFO, qformer_init="other-org/bert")
    assert build_model_card(hub, training_info=info).data.base_model == ["some-org/some-llm", "other-org/bert"]


def test_card_with_the_pipeline_shapes(folders, tmp_path):
    """What training.main writes: loss weights and task counts as dicts, the whole preset as a dict,
    phase-1 curves beside phase-2 ones, and no confidence intervals when bootstrapping is off."""
    folder = copy_with_config(folders["full"], tmp_path / "m")
    shutil.copy(folder / "training_curves.png", folder / "training_curves_phase1.png")
    info = dict(
        TRAINING_INFO,
        preset={"pretrain": {"variant": "IT-II", "max_steps": 120}, "evaluate": {"users": 200}},
        phase1={"variant": "IT-II", "losses": {"itc": 1.0, "user_item": 0.0}, "steps": 120, "time_s": 30.5},
        phase2={"tasks": {"item_title": 800, "conversation": 300}, "steps": 300, "time_s": 600.0, "final_train_loss": 1.25},
    )
    results = json.loads(json.dumps(RESULTS))
    results["models"]["ALS"]["ranking"]["hr@1"]["ci95"] = None
    text = build_model_card(folder, results, info).text
    assert "| Phase 1 (item encoder) | losses: itc=1, user_item=0; steps: 120; time: 30.5 s; variant: IT-II |" in text
    assert "| Phase 2 (alignment) | tasks: item_title=800, conversation=300; steps: 300; time: 10.0 min (600 s); final train loss: 1.25 |" in text
    assert "| Preset | see the settings below |" in text and "pretrain:\n  variant: IT-II\n  max_steps: 120\n" in text
    assert "![training curves](training_curves.png)\n\n![training curves](training_curves_phase1.png)" in text
    assert f"| ALS | {RESULTS['models']['ALS']['ranking']['hr@1']['value']:.4f} | " in text


def test_card_without_results_and_model_choice(folders, tmp_path):
    folder = copy_with_config(folders["light"], tmp_path / "m")
    path = write_model_card(folder)
    card = ModelCard.load(path)
    assert path == folder / "README.md" and card.data.eval_results is None
    assert "No evaluation results were recorded" in card.text and 'from_pretrained("your-org/m"' in card.text
    assert pick_model_name(RESULTS) == OWN  # not ILM-rand, an ablation
    assert pick_model_name(RESULTS, "ILM-rand") == "ILM-rand"
    assert pick_model_name({"models": {"ALS": {}, "Popularity": {}}}) == "ALS"
    with pytest.raises(KeyError, match="not in the results"):
        pick_model_name(RESULTS, "GPT")


# --- assembling and validating ---------------------------------------------------------------------


def test_dry_run_folder_contents(published):
    files = {p.name for p in published["full"].iterdir()}
    assert {"config.json", "configuration_ilm.py", "modeling_ilm.py", "processing_ilm.py", "pipeline_ilm.py", "model.safetensors",
            "processor_config.json", "tokenizer.json", "tokenizer_config.json", "README.md",
            "training_curves.png", "results.json", "training_info.json"} <= files
    assert "checkpoint-10" not in files
    assert not [p for p in published["full"].rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    config = json.loads((published["full"] / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_ilm.ILMConfig", "AutoModel": "modeling_ilm.ILMForConditionalGeneration",
        "AutoModelForCausalLM": "modeling_ilm.ILMForConditionalGeneration", "AutoModelForPreTraining": "modeling_ilm.ILMForItemTextPretraining",
    }
    assert config["custom_pipelines"]["text-generation"]["impl"] == "pipeline_ilm.ILMPipeline"
    processor_config = json.loads((published["full"] / "processor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": "processing_ilm.ILMProcessor"}
    card = ModelCard.load(published["full"] / "README.md")
    assert 'pipeline("text-generation", model="org/full", trust_remote_code=True)' in card.text
    assert 'from_pretrained("org/full"' in card.text and "![training curves](training_curves.png)" in card.text
    assert {r.metric_value for r in card.data.eval_results} >= {0.3309, 0.5478}
    assert "model.safetensors" in {p.name for p in published["light"].iterdir()}


@pytest.fixture
def skip_load_check(monkeypatch):
    """The subprocess load check has its own tests; elsewhere it only costs seconds."""
    monkeypatch.setattr(publish_module, "check_loads_standalone", lambda folder, name=None: "")


def test_generated_card_is_rebuilt_with_the_repo_id_and_own_card_kept(folders, tmp_path, skip_load_check):
    folder = copy_with_config(folders["light"], tmp_path / "m")
    write_model_card(folder)  # as training.main does, before any repo id is known
    assert 'from_pretrained("your-org/m"' in (folder / "README.md").read_text()
    out = Path(publish(folder, "org/light", dry_run=True, out=tmp_path / "a"))
    card = (out / "README.md").read_text()
    assert 'from_pretrained("org/light"' in card and "your-org" not in card
    (folder / "README.md").write_text("# My own card\n")
    out = Path(publish(folder, "org/light", dry_run=True, out=tmp_path / "b"))
    assert (out / "README.md").read_text() == "# My own card\n"


def test_refuses_pickles_and_leaves_nothing(folders, tmp_path):
    folder = copy_with_config(folders["light"], tmp_path / "m")
    torch.save({"w": torch.zeros(1)}, folder / "pytorch_model.bin")
    out = tmp_path / "out" / "hub"
    with pytest.raises(PublishError, match=r"pytorch_model.bin: a pickle format by its name.*safetensors"):
        publish(folder, "org/m", dry_run=True, out=out)
    assert not out.exists() and list((tmp_path / "out").iterdir()) == []  # no staging folder either


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("drop_modeling_file", "modeling_ilm.py is named in an auto_map but missing"),
        ("drop_auto_map", "auto_map lacks AutoModel"),
        ("local_llm", "not a Hub id"),
        ("pickle_in_subfolder", "extra/state.pkl: a pickle format by its name"),
        ("light_flag_on_full_weights", "the weights hold the LLM"),
    ],
)
def test_validation_names_each_problem(published, tmp_path, breakage, message):
    folder = Path(shutil.copytree(published["full" if breakage == "light_flag_on_full_weights" else "light"], tmp_path / "m"))
    config = json.loads((folder / "config.json").read_text())
    if breakage == "drop_modeling_file":
        (folder / "modeling_ilm.py").unlink()
    elif breakage == "drop_auto_map":
        del config["auto_map"]["AutoModel"]
    elif breakage == "local_llm":
        config["text_model_name_or_path"] = str(tmp_path)
    elif breakage == "pickle_in_subfolder":
        (folder / "extra").mkdir()
        (folder / "extra" / "state.pkl").write_bytes(b"x")
    else:
        config["stores_language_model"] = False
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(PublishError, match=re.escape(message)):
        validate(folder)


def test_light_folder_with_lora_validates(tiny_components, processor, tmp_path):
    """LoRA weights are trained weights: a light folder keeps them, and that is not "holding the LLM"."""
    lora_model = build(tiny_components, processor)
    lora_model.enable_lora(r=2, target_modules=["q_proj", "v_proj"])
    lora_model.config.text_model_name_or_path = LIGHT_LLM_ID
    lora_model.save_pretrained(tmp_path / "m", include_language_model=False)
    processor.save_pretrained(tmp_path / "m")
    write_model_card(tmp_path / "m")
    validate(tmp_path / "m")
    assert "enables LoRA" in (tmp_path / "m" / "README.md").read_text()
    staging = tmp_path / "staging"
    staging.mkdir()
    assemble(tmp_path / "m", staging, repo_id="you/ilm-lora")  # the standard PEFT adapter files are published too
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (staging / "llm_adapter").iterdir()}


def test_validation_never_runs_remote_code_that_is_not_the_packages_own(published, tmp_path):
    folder = Path(shutil.copytree(published["light"], tmp_path / "m"))
    planted = tmp_path / "ran"
    code = (folder / "modeling_ilm.py").read_text()
    (folder / "modeling_ilm.py").write_text(f"open({str(planted)!r}, 'w').close()\n" + code)
    (folder / "helpers.py").write_text(f"open({str(planted)!r}, 'w').close()\n")
    with pytest.raises(PublishError) as failure:
        validate(folder)
    assert "modeling_ilm.py is not the ilm package's own modeling_ilm.py" in str(failure.value)
    assert "helpers.py is not the ilm package's own" in str(failure.value)
    assert not planted.exists()


def test_standalone_check_fails_when_the_folder_does_not_load(published, tmp_path):
    folder = Path(shutil.copytree(published["light"], tmp_path / "m"))
    (folder / "tokenizer.json").write_text((folder / "tokenizer.json").read_text()[:-20])  # a truncated tokenizer
    with pytest.raises(PublishError, match="does not load with trust_remote_code"):
        validate(folder)


def _pickled(path):
    torch.save({"w": 1}, path, _use_new_zipfile_serialization=False)


def _torch_zip(path):
    torch.save({"w": torch.zeros(1)}, path)


def _object_npy(path):
    import numpy as np

    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)


@pytest.mark.parametrize(
    "name, write, reason",
    [
        ("state.PKL", lambda p: p.write_bytes(b"x"), "a pickle format by its name"),
        ("optimizer.Bin", lambda p: p.write_bytes(b"x"), "a pickle format by its name"),
        ("model.joblib", lambda p: p.write_bytes(b"x"), "a pickle format by its name"),
        ("weights.dat", _pickled, "a pickle stream"),
        ("archive.data", _torch_zip, "a zip archive holding a pickle"),
        ("table.npy", _object_npy, "a NumPy object array"),
        ("hostname.txt", lambda p: p.symlink_to("/etc/hostname"), "a symbolic link to /etc/hostname"),
    ],
)
def test_unsafe_files_are_found_by_content_and_never_copied(folders, tmp_path, name, write, reason):
    folder = copy_with_config(folders["light"], tmp_path / "m")
    write(folder / name)
    out = tmp_path / "out" / "hub"
    with pytest.raises(PublishError, match=re.escape(f"{name}: {reason}")):
        publish(folder, "org/m", dry_run=True, out=out)
    assert not out.exists()
    staged = Path(shutil.copytree(folders["light"], tmp_path / "staged"))
    write(staged / name)
    with pytest.raises(PublishError, match=re.escape(f"{name}: {reason}")):
        validate(staged)


def test_isolated_process_cannot_import_the_package(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    probe = "import json\nprint(json.dumps([p for p in sys.path if os.path.isdir(os.path.join(p, 'modeling_ilm'))]))"
    # Even run from the repository with it on PYTHONPATH: nothing on sys.path holds the package.
    result = run_without_package(probe, cwd=repo, env={"PYTHONPATH": str(repo), "HF_MODULES_CACHE": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
    # The control: without the isolation the package would be found.
    find = "import importlib.util; assert importlib.util.find_spec('modeling_ilm')"
    control = subprocess.run([sys.executable, "-c", find], cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, capture_output=True, text=True)
    assert control.returncode == 0, control.stderr


# --- loading by repo id from an offline cache --------------------------------------------------------

LOAD_BY_REPO_ID = r"""
import json, re
import torch
from huggingface_hub import hf_hub_download
from transformers import AutoModel, AutoProcessor

repo_id, expected_path = sys.argv[1], sys.argv[2]
hub = {"cache_dir": sys.argv[3]} if len(sys.argv) > 3 else {}
expected = torch.load(expected_path)
model = AutoModel.from_pretrained(repo_id, trust_remote_code=True, **hub).eval()
processor = AutoProcessor.from_pretrained(repo_id, trust_remote_code=True, **hub)
batch = processor(messages=expected["chats"], item_ids=expected["item_ids"], user_ids=expected["user_ids"])
report = {"same_inputs": all(torch.equal(batch[k], v) for k, v in expected["batch"].items())}
with torch.no_grad():
    report["logits_max_diff"] = (model(**batch).logits - expected["logits"]).abs().max().item()
report["generated"] = model.generate(**batch, max_new_tokens=8, do_sample=False).tolist()
report["module"], report["processor"] = type(model).__module__, type(processor).__name__
report["llm"] = model.config.text_model_name_or_path
# the card's own code, as a reader would paste it
blocks = re.findall(r"```python\n(.*?)```", open(hf_hub_download(repo_id, "README.md", **hub)).read(), re.S)
printed = []
namespace = {"hub": hub, "print": printed.append}  # with cache_dir=, the snippets get it too
if not hub:  # pipeline() looks up a custom pipeline's code without model_kwargs' cache_dir: HF_HUB_CACHE only
    exec(blocks[0], namespace)
    report["pipeline_output"] = printed[-1]
exec(blocks[1].replace("trust_remote_code=True", "trust_remote_code=True, **hub"), namespace)
report["snippet_output"] = namespace["output"].tolist()
exec(blocks[2], namespace)
report["raw_vector_output_shape"] = list(namespace["output"].shape)
print("REPORT " + json.dumps(report))
"""


@pytest.mark.parametrize(
    "kind, via",
    [
        ("full", "env"),
        ("light", "env"),
        ("light", "cache_dir"),
    ],
)
def test_offline_repo_id_loading(kind, via, published, model, processor, tiny_components, tmp_path):
    """The published folder, laid into a Hugging Face cache as `org/<kind>`, loads by repo id with
    HF_HUB_OFFLINE=1 in a process without the package (the light one with its LLM from the cache
    too) and generates exactly what the source model generates; so does the card's snippet.
    `via`: the cache is found through HF_HUB_CACHE, or only through the `cache_dir=` argument."""
    cache = tmp_path / "hub"
    snapshot = lay_into_hf_cache(published[kind], f"org/{kind}", cache)
    assert (cache / f"models--org--{kind}" / "refs" / "main").read_text() == snapshot.name
    if kind == "light":
        lay_into_hf_cache(tiny_components["llm"], LIGHT_LLM_ID, cache)
    batch = processor(messages=CHATS, item_ids=ITEMS, user_ids=USERS)
    snippet_inputs = processor(messages=SNIPPET_CHAT, item_ids=["1"])
    with torch.no_grad():
        logits = model(**batch).logits
    torch.save(
        {"chats": CHATS, "item_ids": ITEMS, "user_ids": USERS, "batch": dict(batch), "logits": logits},
        tmp_path / "expected.pt",
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "home"), "HF_MODULES_CACHE": str(tmp_path / "modules")}
    args = [f"org/{kind}", tmp_path / "expected.pt"]
    if via == "env":
        env["HF_HUB_CACHE"] = str(cache)
    else:
        env["HF_HUB_CACHE"] = str(tmp_path / "empty")
        args.append(cache)
    result = run_without_package(LOAD_BY_REPO_ID, args, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    report = json.loads(result.stdout.split("REPORT ", 1)[1])
    print(kind, via, json.dumps(report))
    assert report["module"].startswith(f"transformers_modules.org.{kind}.") and report["processor"] == "ILMProcessor"
    assert report["same_inputs"] and report["logits_max_diff"] == 0.0
    assert report["generated"] == model.generate(**batch, max_new_tokens=8, do_sample=False).tolist()
    assert report["llm"] == (LIGHT_LLM_ID if kind == "light" else tiny_components["llm"])
    assert report["snippet_output"] == model.generate(**snippet_inputs, max_new_tokens=32).tolist()
    if via == "env":
        assert set(report["pipeline_output"]) == {"generated_text", "item_id", "title"} and report["pipeline_output"]["generated_text"]
    assert report["raw_vector_output_shape"][0] == 1


# --- uploading -------------------------------------------------------------------------------------


class FakeHfApi:
    """Stands in for HfApi: records calls, never touches the network."""

    calls = []
    whoami_error = None

    def whoami(self):
        FakeHfApi.calls.append(("whoami",))
        if FakeHfApi.whoami_error:
            raise FakeHfApi.whoami_error
        return {"name": "tester"}

    def create_repo(self, repo_id, **kwargs):
        FakeHfApi.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        FakeHfApi.calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))


@pytest.fixture
def fake_hub(monkeypatch, tmp_path, skip_load_check):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))  # no stored login either
    monkeypatch.setattr(publish_module, "HfApi", FakeHfApi)
    monkeypatch.setattr(FakeHfApi, "calls", [])
    monkeypatch.setattr(FakeHfApi, "whoami_error", None)
    return FakeHfApi


@pytest.mark.parametrize(
    "token, error, message",
    [
        (None, None, "No Hugging Face token found"),
        ("hf_test", HfHubHTTPError("401 Unauthorized", response=SimpleNamespace(headers={}, request=None, status_code=401)), "token was rejected"),
        ("hf_test", ConnectionError("no route to host"), "Could not reach the Hugging Face Hub"),
    ],
)
def test_no_usable_token_fails_before_upload_and_leaves_nothing(fake_hub, folders, monkeypatch, tmp_path, token, error, message):
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    fake_hub.whoami_error = error
    out = tmp_path / "out" / "hub"
    with pytest.raises(PublishError, match=message) as failure:
        publish(folders["light"], "org/light", out=out)
    assert "hf auth login" in str(failure.value) and "HF_TOKEN" in str(failure.value)
    assert not [c for c in fake_hub.calls if c[0] != "whoami"]  # nothing created or uploaded
    assert not out.exists() and list((tmp_path / "out").iterdir()) == []


def test_upload_with_token(fake_hub, folders, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    out = tmp_path / "hub"
    publish_module.main(["--model", str(folders["full"]), "--repo-id", "org/full", "--private", "--out", str(out)])
    assert "Published: https://huggingface.co/org/full" in capsys.readouterr().out
    whoami, create, upload = fake_hub.calls
    assert whoami == ("whoami",)
    assert create == ("create_repo", "org/full", {"repo_type": "model", "private": True, "exist_ok": True})
    assert upload[1] == "org/full" and {"README.md", "model.safetensors", "modeling_ilm.py", "config.json"} <= set(upload[2])
    assert sorted(p.name for p in out.iterdir()) == upload[2]  # --out keeps exactly what was uploaded


# --- the data build as a Hub dataset -----------------------------------------------------------------


def test_data_build_publishes_as_a_dataset_that_loads_back(data_dir, tmp_path, capsys):
    """One config per table, the CF embeddings beside them, a card with the source's terms; every
    config loads back with `datasets.load_dataset` row for row."""
    from datasets import load_dataset, load_from_disk

    out = tmp_path / "ds"
    publish_module.main(["--dataset", str(data_dir), "--repo-id", "you/ilm-data", "--dry-run", "--out", str(out), "--license", "cc-by-4.0"])
    assert "Dry run OK" in capsys.readouterr().out
    assert {"item_texts", "item_item", "user_item", "chats", "candidates", "interactions", "items", "cf", "README.md"} <= {p.name for p in out.iterdir()}
    assert (out / "cf" / "embeddings.safetensors").is_file()
    chats = load_dataset(str(out), "chats", cache_dir=str(tmp_path / "cache"))
    built = load_from_disk(str(data_dir / "phase2"))
    assert set(chats) == set(built) and chats["train"].to_list() == built["train"].to_list()
    candidates = load_dataset(str(out), "candidates", split="test", cache_dir=str(tmp_path / "cache"))
    stored = json.loads((data_dir / "candidates" / "test.json").read_text())
    assert {row["user_id"]: row["candidates"] for row in candidates} == stored and all(r["target"] == r["candidates"][0] for r in candidates)
    card = (out / "README.md").read_text()
    assert "license: cc-by-4.0" in card and "config_name: item_texts" in card and 'load_dataset("you/ilm-data", "chats"' in card


def test_movielens_builds_are_never_published_publicly(data_dir, tmp_path, fake_hub, monkeypatch):
    """GroupLens' terms forbid redistribution: the card says so, and only a private upload is allowed."""
    build = Path(shutil.copytree(data_dir, tmp_path / "ml"))
    stats = json.loads((build / "stats.json").read_text())
    (build / "stats.json").write_text(json.dumps({**stats, "source": {"name": "ml-100k (recbole==1.2.1)"}}))
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    with pytest.raises(PublishError, match="MovieLens' terms forbid redistributing"):
        publish_module.publish_dataset(build, "org/ml")
    assert fake_hub.calls == []
    publish_module.publish_dataset(build, "org/ml", private=True, out=tmp_path / "kept")
    assert [c[2] for c in fake_hub.calls if c[0] == "create_repo"] == [{"repo_type": "dataset", "private": True, "exist_ok": True}]
    card = (tmp_path / "kept" / "README.md").read_text()
    assert "license_name: movielens-100k" in card and "not redistributed without separate permission" in card
