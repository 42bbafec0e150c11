"""Publish an ILM folder to the Hugging Face Hub.

    python -m training.publish --model runs/ml100k/ilm --repo-id org/name [--private] [--dry-run] [--out DIR]

Assembles a Hub-ready copy of the folder (config with auto_map, the three modeling files,
safetensors weights, processor and tokenizer files, README.md model card, training curves),
validates it (auto_map complete, no pickle files, loads with trust_remote_code in a process where
the `ilm` package is not importable), then creates the repository and uploads the folder.

The copy is built in a temporary folder: it reaches `--out` only when validation (and, without
--dry-run, the upload) succeeded, and it is removed on any failure. A missing or rejected token is
reported before anything is uploaded.

`lay_into_hf_cache(folder, repo_id)` puts a folder into a Hugging Face cache as a snapshot of
`repo_id`, so `from_pretrained(repo_id)` finds it with HF_HUB_OFFLINE=1 (to seed an offline machine,
or to test a folder as if it had been downloaded).
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from huggingface_hub import HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError

from modeling_ilm.loading_ilm import LLM_ADAPTER_FOLDER
from model_cards.generate import GENERATED_MARKER, HUB_ID, add_card_arguments, card_arguments, is_hub_id, read_json, write_model_card

# Files that unpickle (and so can run code) when loaded: never published. Names are only the first
# check: `unsafe_reason` reads every file's first bytes too.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
PACKAGE_CODE = Path(__file__).resolve().parent.parent / "modeling_ilm"  # the remote code a saved folder carries
LOGIN_HINT = "run `hf auth login` (the `huggingface-cli login` of older huggingface_hub) or set the HF_TOKEN environment variable"

# Prepended to code run by `run_without_package`: the process must see only the folder's own code.
# Source checkouts (and editable installs' .pth entries) leave sys.path; sys.modules[...] = None then
# blocks the names for any other route (an editable-install import hook, a regular install).
ISOLATION = """
import os, sys
sys.path[:] = [p for p in sys.path if p and not (
    os.path.isdir(os.path.join(p, "modeling_ilm")) and not os.path.isdir(os.path.join(p, "transformers")))]
for _name in ("modeling_ilm", "training", "model_cards"):
    sys.modules[_name] = None
try:
    import modeling_ilm
except ImportError:
    pass
else:
    raise SystemExit("modeling_ilm is still importable")
"""

# Loads config and processor and imports the model class from a folder, with remote code only.
STANDALONE_CHECK = """
from transformers import AutoConfig, AutoProcessor
from transformers.dynamic_module_utils import get_class_from_dynamic_module

folder = sys.argv[1]
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
model_class = get_class_from_dynamic_module(config.auto_map["AutoModel"], folder)
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
print(type(config).__module__, model_class.__name__, type(processor).__name__)
"""


class PublishError(RuntimeError):
    """The folder cannot be published as it is, or the Hub cannot be used; the message says why."""


# --- assembling and validating -----------------------------------------------------------------------


def unsafe_reason(path: Path) -> str | None:
    """Why `path` must not be published (loading it can run code, or it is not the file itself),
    or None. Judged by content as well as by name: a renamed pickle is still a pickle."""
    if path.is_symlink():
        return f"a symbolic link to {os.readlink(path)} (publish real files only)"
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return "a pickle format by its name"
    with open(path, "rb") as f:
        head = f.read(1024)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # the PROTO opcode that starts pickles since protocol 2
        return "a pickle stream"
    if head.startswith(b"PK\x03\x04") and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(name.endswith(".pkl") for name in archive.namelist()):
                return "a zip archive holding a pickle (torch.save's format)"
    if head.startswith(b"\x93NUMPY") and b"'|O'" in head:
        return "a NumPy object array (stored as a pickle)"
    return None


def unsafe_files(folder: Path, recursive=True) -> list[str]:
    paths = sorted(folder.rglob("*") if recursive else folder.iterdir())
    return [f"{p.relative_to(folder)}: {reason}" for p in paths if (p.is_symlink() or p.is_file()) and (reason := unsafe_reason(p))]


def foreign_code(folder: Path) -> list[str]:
    """The folder's Python files that are not byte-for-byte the package's own remote code: validation
    loads the folder with trust_remote_code, and must not run anything else."""
    return [
        f"{p.name} is not the ilm package's own {p.name} (re-save the folder with save_pretrained from this version, or publish it yourself)"
        for p in sorted(folder.glob("*.py"))
        if not (PACKAGE_CODE / p.name).is_file() or p.read_bytes() != (PACKAGE_CODE / p.name).read_bytes()
    ]


def assemble(model_dir, staging, *, repo_id, results=None, training_info=None, **card_kwargs) -> list[str]:
    """Copies the publishable files of `model_dir` into `staging` and writes the card, unless the
    folder has a README.md of its own (one without GENERATED_MARKER: a card made by
    model_cards.generate is rebuilt, so its snippet names `repo_id`). Returns the names that were left
    out (subfolders such as checkpoints, hidden files)."""
    model_dir, staging = Path(model_dir), Path(staging)
    if not (model_dir / "config.json").is_file():
        raise PublishError(f"{model_dir} has no config.json: not a saved ILM folder.")
    unsafe = unsafe_files(model_dir, recursive=False)
    if unsafe:
        raise PublishError(
            f"{model_dir} holds files that cannot be published: {unsafe}. Only safetensors are published (unpickling "
            "runs code on the user's machine): save the model with save_pretrained (safetensors by default) and remove them."
        )
    skipped = []
    for path in sorted(model_dir.iterdir()):
        if path.name == LLM_ADAPTER_FOLDER and path.is_dir():  # the LoRA as a standard PEFT adapter of the LLM
            unsafe = unsafe_files(path)
            if unsafe:
                raise PublishError(f"{path} holds files that cannot be published: {unsafe}. Re-save the model with save_pretrained.")
            shutil.copytree(path, staging / path.name)
        elif path.name.startswith(".") or not path.is_file():
            skipped.append(path.name)
        else:
            shutil.copy2(path, staging / path.name)
    readme = staging / "README.md"
    if not readme.exists() or GENERATED_MARKER in readme.read_text(encoding="utf-8"):
        write_model_card(staging, results, training_info, repo_id=repo_id, **card_kwargs)
    return skipped


def auto_map_files(auto_map: dict) -> set[str]:
    """The module files an auto_map refers to ("module.Class", or lists of them for tokenizers)."""
    files = set()
    for refs in auto_map.values():
        for ref in refs if isinstance(refs, list) else [refs]:
            if ref and "--" not in ref:  # "other/repo--module.Class" lives in another repository
                files.add(ref.split(".")[0] + ".py")
    return files


def weight_keys(folder: Path) -> list[str] | None:
    """Tensor names of the folder's safetensors weights (single file or sharded), None if absent."""
    from safetensors import safe_open

    index = read_json(folder / "model.safetensors.index.json")
    shards = sorted(set(index["weight_map"].values())) if index else ["model.safetensors"]
    if not all((folder / shard).is_file() for shard in shards):
        return None
    keys = []
    for shard in shards:
        with safe_open(folder / shard, "pt") as f:
            keys += list(f.keys())
    return keys


def validate(folder, source=None) -> None:
    """Raises PublishError listing every problem that would make the Hub copy unusable.
    `source` names the folder in messages (the model folder, rather than a staging copy)."""
    folder = Path(folder)
    name = source or folder
    problems = []
    config = read_json(folder / "config.json") or {}
    auto_map = config.get("auto_map") or {}
    for auto_class in ("AutoConfig", "AutoModel"):
        if auto_class not in auto_map:
            problems.append(f"config.json auto_map lacks {auto_class} (save the model with the modeling_ilm package imported)")
    processor_map = (read_json(folder / "processor_config.json") or {}).get("auto_map") or {}
    if "AutoProcessor" not in processor_map:
        problems.append("processor_config.json is missing or its auto_map lacks AutoProcessor (save the ILMProcessor into the folder)")
    for file in sorted(auto_map_files(auto_map) | auto_map_files(processor_map)):
        if not (folder / file).is_file():
            problems.append(f"{file} is named in an auto_map but missing")
    unsafe = unsafe_files(folder)
    if unsafe:
        problems.append(f"files that cannot be published {unsafe}: publish safetensors only")
    problems += foreign_code(folder)
    keys = weight_keys(folder)
    stores_llm = config.get("stores_language_model", True)
    if keys is None:
        problems.append("no model.safetensors (or complete sharded safetensors)")
    elif any(k.startswith("language_model.") and "lora_" not in k for k in keys) != stores_llm:  # LoRA weights stay in light folders
        problems.append(f"config.stores_language_model={stores_llm} but the weights {'lack' if stores_llm else 'hold'} the LLM")
    llm = config.get("text_model_name_or_path")
    if not stores_llm and not is_hub_id(llm):
        problems.append(
            f"this light folder loads its frozen LLM from {llm!r}, which is not a Hub id, so nobody else can load "
            "it: publish the full folder (save_pretrained(dir, include_language_model=True)), or set "
            "config.text_model_name_or_path to the Hub id of exactly these LLM weights"
        )
    if problems:
        raise PublishError(f"{name} is not ready for the Hub:\n - " + "\n - ".join(problems))
    check_loads_standalone(folder, name)


def run_without_package(code: str, args=(), *, cwd, env: dict | None = None, timeout: float | None = 600) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh Python where `modeling_ilm` cannot be imported (isolated mode: no
    PYTHONPATH, no current directory on sys.path), as on the machine of someone who only has
    transformers. Remote code goes to a modules cache under `cwd` unless env says otherwise."""
    full_env = {**os.environ, "HF_MODULES_CACHE": str(Path(cwd) / "hf_modules"), **(env or {})}
    return subprocess.run(
        [sys.executable, "-I", "-c", ISOLATION + code, *map(str, args)],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


def check_loads_standalone(folder: Path, name=None) -> str:
    with tempfile.TemporaryDirectory(prefix="ilm-check-") as tmp:
        result = run_without_package(STANDALONE_CHECK, [Path(folder).resolve()], cwd=tmp, env={"HF_HUB_OFFLINE": "1"})
    if result.returncode != 0:
        raise PublishError(f"{name or folder} does not load with trust_remote_code without the ilm package:\n{result.stderr[-3000:]}")
    return result.stdout


# --- the Hub -----------------------------------------------------------------------------------------


def hub_user(api: HfApi) -> str:
    """The logged-in user's name; a PublishError naming the fix when there is no usable token."""
    if not get_token():
        raise PublishError(f"No Hugging Face token found: {LOGIN_HINT}. Nothing was uploaded.")
    try:
        return api.whoami()["name"]
    except HfHubHTTPError as e:
        if e.response is not None and e.response.status_code == 401:
            raise PublishError(f"The Hugging Face token was rejected: {LOGIN_HINT}. Nothing was uploaded.") from e
        raise PublishError(f"Could not check the token with the Hub ({e}). Nothing was uploaded.") from e
    except Exception as e:  # no network, DNS, proxy...
        raise PublishError(
            f"Could not reach the Hugging Face Hub to check the token ({type(e).__name__}: {e}). Check the network, "
            f"and that you are logged in ({LOGIN_HINT}); --dry-run builds the folder without the network. Nothing was uploaded."
        ) from e


def publish(model_dir, repo_id: str, *, private: bool = False, dry_run: bool = False, out=None, results=None, training_info=None, **card_kwargs) -> str | None:
    """Assembles, validates and (unless `dry_run`) uploads `model_dir` as `repo_id`.

    Returns the repository URL, or with `dry_run` the assembled folder (`out`; None without `out`,
    the folder is then removed again). Card options (`model_name`, `dataset`, `license`) go to
    `model_cards.build_model_card` when the card is generated (see `assemble`).
    """

    def build(staging):
        skipped = assemble(model_dir, staging, repo_id=repo_id, results=results, training_info=training_info, **card_kwargs)
        if skipped:
            print(f"Left out (not plain files of the model folder): {', '.join(skipped)}")
        validate(staging, source=model_dir)

    return publish_folder(build, repo_id, "model", private=private, dry_run=dry_run, out=out)


def publish_dataset(data_dir, repo_id: str, *, private: bool = False, dry_run: bool = False, out=None, license=None) -> str | None:
    """A data build (`python -m training.data build`) as a Hub dataset: one config per table
    (`training.data.hub`), a dataset card stating the source data's terms, loaded back with
    `datasets.load_dataset` before anything is uploaded. Returns as `publish` does."""
    from model_cards.dataset_card import is_movielens, write_dataset_card
    from training.data.hub import export_dataset

    stats = read_json(Path(data_dir) / "stats.json")
    if stats is None:
        raise PublishError(f"{data_dir} has no stats.json: not a data build (python -m training.data build ... --out DIR).")
    if is_movielens(stats) and not private and not dry_run:
        raise PublishError(
            "MovieLens' terms forbid redistributing the data (derived tables included) without GroupLens' permission: "
            "publish it with --private, or build from data you may share."
        )

    def build(staging):
        rows = export_dataset(data_dir, staging)
        write_dataset_card(staging, rows, stats, repo_id, license)
        validate_dataset(staging, rows)

    return publish_folder(build, repo_id, "dataset", private=private, dry_run=dry_run, out=out)


def validate_dataset(folder: Path, rows: dict):
    """Every config loads with `datasets.load_dataset(folder, config)` with the build's row counts,
    and nothing in the folder unpickles."""
    from datasets import load_dataset

    unsafe = unsafe_files(folder)
    if unsafe:
        raise PublishError(f"The dataset folder holds files that cannot be published: {unsafe}.")
    with tempfile.TemporaryDirectory(prefix="ilm-dataset-check-") as cache:
        for name, splits in rows.items():
            loaded = load_dataset(str(folder), name, cache_dir=cache)
            got = {split: loaded[split].num_rows for split in loaded}
            if got != splits:
                raise PublishError(f"Config {name!r} loads as {got} but the build has {splits}.")


def publish_folder(build, repo_id: str, repo_type: str, *, private: bool, dry_run: bool, out) -> str | None:
    """`build(staging)` fills and validates a staging folder; then upload (unless `dry_run`) and keep
    it as `out`. The staging folder is removed on any failure."""
    if not HUB_ID.fullmatch(repo_id):
        raise PublishError(f"--repo-id must look like org/name, got {repo_id!r}.")
    out = Path(out) if out else None
    if out and out.exists() and any(out.iterdir()):
        raise PublishError(f"{out} exists and is not empty; remove it or choose another --out.")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
    # Next to --out, so that the final move is a rename on the same file system.
    staging = Path(tempfile.mkdtemp(prefix=".ilm-publish-", dir=out.parent if out else None))
    try:
        build(staging)
        print(f"Validated: {', '.join(sorted(p.name for p in staging.iterdir()))}")
        if dry_run:
            result = str(out) if out else None
        else:
            api = HfApi()
            user = hub_user(api)
            url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
            api.upload_folder(repo_id=repo_id, repo_type=repo_type, folder_path=staging, commit_message=f"Upload ILM {repo_type} (by {user})")
            result = str(url)
        if out:
            if out.exists():  # empty, checked above
                out.rmdir()
            staging.rename(out)
        return result
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --- local Hub cache ---------------------------------------------------------------------------------


def lay_into_hf_cache(folder, repo_id: str, cache_dir=None) -> Path:
    """Copies `folder` into a Hugging Face cache as the `main` snapshot of the model `repo_id`, so that
    `from_pretrained(repo_id)` finds it offline. `cache_dir` defaults to HF_HUB_CACHE. The commit
    hash is a digest of the files, so the same folder always lands in the same snapshot. Files are
    copied into the snapshot (the Hub client's blobs/ + symlinks are optional). Returns the snapshot."""
    folder = Path(folder)
    cache = Path(cache_dir or constants.HF_HUB_CACHE)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    digest = hashlib.sha1()
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    commit = digest.hexdigest()
    repo = cache / ("models--" + repo_id.replace("/", "--"))  # the Hub client's folder name for a model repo
    snapshot = repo / "snapshots" / commit
    shutil.rmtree(snapshot, ignore_errors=True)
    for path in files:
        target = snapshot / path.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="a saved ILM folder (full or light)")
    what.add_argument("--dataset", dest="data_dir", help="a data build (python -m training.data build ... --out DIR): published as a Hub dataset")
    parser.add_argument("--repo-id", required=True, help="org/name on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--dry-run", action="store_true", help="build and validate only, no network")
    parser.add_argument("--out", help="keep the assembled folder here (must not exist or be empty)")
    add_card_arguments(parser)  # used when the folder has no card of its own (or a generated one)
    args = parser.parse_args(argv)
    try:
        if args.data_dir:
            result = publish_dataset(args.data_dir, args.repo_id, private=args.private, dry_run=args.dry_run, out=args.out, license=args.license)
        else:
            result = publish(args.model, args.repo_id, private=args.private, dry_run=args.dry_run, out=args.out, **card_arguments(args))
    except PublishError as e:
        sys.exit(f"error: {e}")
    if args.dry_run:
        print(f"Dry run OK: the folder is in {result}" if result else "Dry run OK (pass --out DIR to keep the folder).")
    else:
        print(f"Published: {result}")


if __name__ == "__main__":
    main()
