"""Validation of the workflow's ``config.yaml`` against its JSON schema, with readable errors.

Used by the Snakefile (which must not import torch): only the standard library, PyYAML and
jsonschema (both Snakemake dependencies). Defaults written in the schema are filled in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "validate_config"]


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
