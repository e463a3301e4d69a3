"""Validation of the workflow's ``config.yaml`` against its JSON schema, with readable errors.

Used by the Snakefile (which must not import torch): only the standard library, PyYAML and
jsonschema (both Snakemake dependencies). Defaults written in the schema are filled in. Also the
two pieces of the configuration's meaning that the workflow's rules and scripts outside Snakemake
(benchmarks/train_check.py) share: a method's train block and a synth dataset's ``crd generate``
arguments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "validate_config", "load_config", "train_block", "generate_arguments"]


class ConfigError(ValueError):
    """The configuration does not match the schema; the message names the key and the rule."""


def _with_defaults(validator_class):
    """A validator class that also fills in ``default`` values (jsonschema FAQ recipe)."""
    from jsonschema import validators

    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = sub["default"]
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


def validate_config(config: dict[str, Any], schema_path: Path) -> dict[str, Any]:
    """Fill in defaults and check ``config`` in place; raise :class:`ConfigError` on the first
    problems, each as ``key.path: message``."""
    import yaml
    from jsonschema import Draft202012Validator

    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = _with_defaults(Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors[:5]:
            where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
            lines.append(f"{where}: {err.message}")
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise ConfigError("; ".join(lines) + more + f" [schema: {schema_path}]")
    return config


def load_config(paths: list[Path], schema_path: Path) -> dict[str, Any]:
    """The configuration of ``paths`` layered as Snakemake's ``--configfile a b`` does (a later
    file's top-level keys replace, dicts merged key by key), validated with defaults filled in."""
    import yaml

    config: dict[str, Any] = {}
    for path in paths:
        _merge(config, yaml.safe_load(Path(path).read_text()) or {})
    return validate_config(config, schema_path)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> None:
    """Snakemake's recursive update of a config dict: nested dicts merged, other values replaced."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def train_block(config: dict[str, Any], method: str, method_train: dict[str, Any]) -> dict[str, Any]:
    """A method's train settings: the config's ``train`` block < the method file's ``TRAIN``
    (``method_train``) < the config's ``method_train[method]``."""
    return {**config["train"], **method_train, **config.get("method_train", {}).get(method, {})}


def generate_arguments(generate: dict[str, Any]) -> list[str]:
    """``crd generate synth`` options from a dataset's ``generate:`` block, one list item per
    word (``{"shape": [32, 64, 64]}`` -> ``["--shape", "32", "64", "64"]``), not shell-quoted."""
    args: list[str] = []
    for key, value in generate.items():
        values = value if isinstance(value, list) else [value]
        args += [f"--{key.replace('_', '-')}", *(str(v) for v in values)]
    return args
