"""Declarative configs: dataclass schemas merged with YAML files and ``key=value`` overrides.

OmegaConf structured configs refuse keys the schema does not declare and values of the
wrong type, so a typo in a config is an error naming the key rather than a silent default.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import yaml
from omegaconf import DictConfig, Node, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vidfuse.errors import ConfigError

T = TypeVar("T")

def _bundled_configs() -> Path:
    """``configs/`` as installed (a package, so wheels carry it), not as the source tree has it."""
    from importlib.resources import files

    return Path(str(files("configs")))


CONFIG_ROOT = _bundled_configs()


# Every config schema a file may be written for: (what it is, "module:class"). A file given to
# the wrong command is named as the kind it is, not as a list of unknown keys.
CONFIG_KINDS = (
    ("an extraction config (vidfuse extract / extract-text; configs/extract/)", "pipeline.config:ExtractConfig"),
    ("a fusion training config (vidfuse train; configs/train/)", "fusion.trainer:TrainConfig"),
    ("an extractor fine-tuning config (vidfuse finetune; configs/train/*_ft*)", "fusion.finetune:FinetuneConfig"),
    ("a dataset config (configs/datasets/)", "pipeline.datasets:DatasetConfig"),
)


def resolve_config_path(name_or_path: str | Path, kind: str) -> Path:
    """A config given as a path, or by name from ``configs/<kind>/<name>.yaml``."""
    candidate = Path(name_or_path)
    if candidate.is_file():
        return candidate
    if candidate.is_dir():
        raise ConfigError(f"config {str(name_or_path)!r} is a directory, expected a YAML file")
    bundled = CONFIG_ROOT / kind / f"{candidate.stem}.yaml"
    if bundled.is_file():
        return bundled
    known = sorted(p.stem for p in (CONFIG_ROOT / kind).glob("*.yaml"))
    raise ConfigError(f"config {str(name_or_path)!r} not found (as a file, nor in configs/{kind}/: {known})")


def _describe(value: Any) -> str:
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    elif isinstance(value, Node):
        value = value._value()
    return repr(value)


def _shape_errors(schema: DictConfig, layer: DictConfig, prefix: str = "") -> list[str]:
    """Sections given a scalar, lists given a mapping or a scalar, ...: named by dotted key.

    OmegaConf reports these without the key ("Merge error: int is not a subclass of
    OutputConfig") or not as its own error at all (a plain TypeError), so they are found first.
    """
    errors = []
    for key in layer.keys():
        if key not in schema:
            continue  # unknown keys: OmegaConf's message names them (with a "did you mean")
        target, value = schema._get_node(key), layer._get_node(key)
        dotted = f"{prefix}{key}"
        if value is None or (isinstance(value, Node) and value._is_none()):
            continue  # null: OmegaConf says whether the field is optional
        if OmegaConf.is_dict(target) and not OmegaConf.is_dict(value):
            section = getattr(target._metadata.object_type, "__name__", "mapping")
            errors.append(f"{dotted}: expected a mapping of settings ({section}), got {_describe(value)}")
        elif OmegaConf.is_list(target) and not OmegaConf.is_list(value):
            errors.append(f"{dotted}: expected a list, got {_describe(value)}")
        elif OmegaConf.is_dict(target) and is_dataclass(target._metadata.object_type):
            errors.extend(_shape_errors(target, value, f"{dotted}."))
    return errors


def merge_config(schema: type[T], *layers: Any, source: str = "defaults", prefix: str = "") -> T:
    """``schema`` defaults <- each layer (mappings, DictConfigs, instances); errors name the key.

    ``source`` says where the layers came from (a file, an extractor), for the message;
    ``prefix`` is where ``schema`` sits in a larger config (``"extractors.clip"``), so keys are
    named by their full dotted path.
    """
    lead = f"{prefix}." if prefix else ""
    try:
        base = OmegaConf.structured(schema)
        for layer in layers:
            if OmegaConf.is_dict(layer) or isinstance(layer, dict):
                errors = _shape_errors(base, OmegaConf.create(layer) if isinstance(layer, dict) else layer, lead)
                if errors:
                    raise ConfigError(f"{source}: {'; '.join(errors)}")
            elif layer is not None and not is_dataclass(layer):
                raise ConfigError(f"{source}: expected a mapping of settings, got {_describe(layer)}")
        merged = OmegaConf.merge(base, *layers)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
        msg = str(exc).splitlines()[0]
        where = f" (key {lead + str(key)!r})" if key else ""
        raise ConfigError(f"{source}: {msg}{where}") from None
    except (TypeError, ValueError) as exc:  # what OmegaConf raises unwrapped for some merges
        raise ConfigError(f"{source}: {str(exc).splitlines()[0]}") from None


def _schema_keys(schema: type) -> set[str]:
    return {f.name for f in fields(schema)} if is_dataclass(schema) else set()


def _kind_of(schema: type) -> str:
    for description, target in CONFIG_KINDS:
        module, _, name = target.partition(":")
        if schema.__module__ == module and schema.__name__ == name:
            return description
    return f"a {schema.__name__}"


def _other_kind(schema: type, keys: Sequence[str]) -> str | None:
    """The kind of config whose schema takes every top-level key of a file ``schema`` does not fit."""
    for description, target in CONFIG_KINDS:
        module, _, name = target.partition(":")
        if schema.__module__ == module and schema.__name__ == name:
            continue
        try:
            other = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        if set(keys) <= _schema_keys(other):
            return description
    return None


def _yaml_error(path: Path, exc: Exception) -> ConfigError:
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return ConfigError(f"{path} line {mark.line + 1}: not valid YAML ({problem} at column {mark.column + 1})")
    return ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")


def read_config_file(schema: type, path: Path) -> DictConfig:
    """A YAML file as a mapping for ``schema``: encoding, syntax, emptiness and kind checked, naming the file."""
    from pipeline.captions import read_text_file  # same encoding checks as every text input

    text = read_text_file(path, error=ConfigError)
    try:
        # the shape first: OmegaConf.create reads a lone word as a key ("laff" -> {laff: None})
        shape = yaml.safe_load(text)
        loaded = OmegaConf.create(text) if isinstance(shape, dict) else None
    except Exception as exc:  # YAML syntax errors come from several parser classes
        raise _yaml_error(path, exc) from None
    if shape is None or shape == {}:
        raise ConfigError(f"{path}: empty config (no settings); expected {_kind_of(schema)}")
    if loaded is None:
        got = "a list" if isinstance(shape, list) else f"the single value {shape!r}"
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {got}")
    keys = [str(k) for k in loaded.keys()]
    if not set(keys) <= _schema_keys(schema):
        other = _other_kind(schema, keys)
        if other is not None:
            unknown = [k for k in keys if k not in _schema_keys(schema)]
            raise ConfigError(f"{path}: this is {other}, not {_kind_of(schema)} (unknown top-level key(s) {unknown})")
    return loaded


def load_config(
    schema: type[T],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    kind: str | None = None,
    check: Callable[[T], Any] | None = None,
) -> T:
    """Merge ``schema`` defaults <- YAML file <- ``key=value`` overrides; returns a schema instance.

    ``check(config)`` validates the values (sizes, names of backends, losses, ...); its
    :class:`ConfigError` is reported with the file and overrides it came from, so a command
    that passes its check refuses a bad value before it reads or writes anything.
    """
    layers = []
    source = "defaults"
    if path is not None:
        resolved = resolve_config_path(path, kind) if kind else Path(path)
        if not resolved.exists():
            raise ConfigError(f"config file not found: {resolved}")
        source = str(resolved)
        layers.append(read_config_file(schema, resolved))
    bad = [o for o in overrides if "=" not in o or not o.split("=", 1)[0].strip()]
    if bad:
        raise ConfigError(f"override {bad[0]!r} is not of the form key=value")
    if overrides:
        source = f"{source} + overrides {list(overrides)}"
        try:
            layers.append(OmegaConf.from_dotlist(list(overrides)))
        except OmegaConfBaseException as exc:
            raise ConfigError(f"overrides {list(overrides)}: {str(exc).splitlines()[0]}") from None
    config = merge_config(schema, *layers, source=source)
    if check is not None:
        try:
            check(config)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    return config


def config_to_dict(config: Any) -> dict:
    """Plain dict of a structured config (for manifests and checkpoints)."""
    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True)  # type: ignore[return-value]


def config_hash(config: Any) -> str:
    """Stable short hash of a config: equal hashes mean equal settings."""
    payload = json.dumps(config_to_dict(config) if not isinstance(config, dict) else config, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def save_config(config: Any, path: str | Path) -> None:
    """Write a config as YAML, loadable again by :func:`load_config`."""
    Path(path).write_text(OmegaConf.to_yaml(OmegaConf.structured(config)))
