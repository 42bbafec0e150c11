"""Run configs: a YAML/JSON file of dataclass fields, plus `--set key=value` overrides."""

import dataclasses
import json
import typing
from pathlib import Path

import yaml


def check_whole_numbers(config, least: dict):
    """Raises naming the first field of `config` that is not a whole number >= its bound in `least`
    (None passes where the field's type allows it: "no cap")."""
    hints = typing.get_type_hints(type(config))
    for name, low in least.items():
        value = getattr(config, name)
        if value is None and type(None) in typing.get_args(hints[name]):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}.")


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (plain YAML
    keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        twice = sorted({str(k) for k in keys if keys.count(k) > 1})
        if twice:
            raise ValueError(f"{node.start_mark.name}, line {node.start_mark.line + 1}: keys {twice} are given twice; keep one of each.")
        return super().construct_mapping(node, deep)


def read_config_file(path) -> dict:
    """A YAML (or JSON) config file as a dict; duplicate keys are an error."""
    text = Path(path).read_text()
    values = (json.loads(text) if str(path).endswith(".json") else yaml.load(text, Loader=UniqueKeyLoader)) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a config is a mapping of field: value, got {type(values).__name__}.")
    return values


def load_config(cls, path=None, overrides=(), section=None):
    """Builds `cls` (a dataclass) from a YAML/JSON file (or a dict of fields) and `key=value` overrides
    (values in YAML syntax).

    A preset file with sections (`pretrain:`, `finetune:`, ...) gives the `section` one.
    """
    values = {}
    if isinstance(path, dict):
        values, path = dict(path), None
    if path is not None:
        values = read_config_file(path)
        if section in values:
            values = dict(values[section] or {})
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep:
            raise ValueError(f"Override {override!r} must look like key=value.")
        values[key.strip()] = yaml.safe_load(value)
    fields = {f.name for f in dataclasses.fields(cls)}
    if "training_args" in fields:  # the phase configs: other TrainingArguments fields pass through to Trainer
        from transformers import TrainingArguments

        trainer_fields = {f.name for f in dataclasses.fields(TrainingArguments)}
        passed = {key: values.pop(key) for key in list(values) if key not in fields and key in trainer_fields}
        if passed:
            values["training_args"] = {**(values.get("training_args") or {}), **passed}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(
            f"{path or 'overrides'}: unknown config keys {unknown}; known: {sorted(fields)}"
            + (" and any TrainingArguments field." if "training_args" in fields else ".")
        )
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        types = typing.get_args(hints[key]) + (hints[key],)
        # YAML 1.1 reads "5e-4" and "1e3" as strings; numbers are what a numeric field means
        if isinstance(value, str) and (float in types or int in types) and str not in types:
            try:
                value = values[key] = float(value)
            except ValueError:
                raise ValueError(f"Config field {key} must be a number, got {value!r}.") from None
        if int in types and float not in types and isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"Config field {key} must be a whole number, got {value!r}.")
            values[key] = int(value)
    return cls(**values)


def save_config(config, path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))


def config_from_cli(cls, section, description, argv=None):
    """`--config FILE` (a config, or a preset whose `section` is used) and `--set key=value` overrides."""
    import argparse
    import logging

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help=f"YAML/JSON file of {cls.__name__} fields, or a preset (its {section}: section)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return load_config(cls, args.config, args.set, section=section)
