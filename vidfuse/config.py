"""Declarative configs: dataclass schemas merged with YAML files and ``key=value`` overrides.

OmegaConf structured configs refuse keys the schema does not declare and values of the
wrong type, so a typo in a config is an error naming the key rather than a silent default.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vidfuse.errors import ConfigError

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_ROOT = REPO_ROOT / "configs"


def resolve_config_path(name_or_path: str | Path, kind: str) -> Path:
    """A config given as a path, or by name from ``configs/<kind>/<name>.yaml``."""
    candidate = Path(name_or_path)
    if candidate.is_file():
        return candidate
    bundled = CONFIG_ROOT / kind / f"{candidate.stem}.yaml"
    if bundled.is_file():
        return bundled
    known = sorted(p.stem for p in (CONFIG_ROOT / kind).glob("*.yaml"))
    raise ConfigError(f"config {str(name_or_path)!r} not found (as a file, nor in configs/{kind}/: {known})")


def merge_config(schema: type[T], *layers: Any, source: str = "defaults") -> T:
    """``schema`` defaults <- each layer (mappings, DictConfigs, instances); errors name the key.

    ``source`` says where the layers came from (a file, an extractor), for the message.
    """
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), *layers)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
        msg = str(exc).splitlines()[0]
        where = f" (key {key!r})" if key else ""
        raise ConfigError(f"{source}: {msg}{where}") from None


def load_config(
    schema: type[T],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    kind: str | None = None,
) -> T:
    """Merge ``schema`` defaults <- YAML file <- ``key=value`` overrides; returns a schema instance."""
    layers = []
    source = "defaults"
    if path is not None:
        resolved = resolve_config_path(path, kind) if kind else Path(path)
        if not resolved.is_file():
            raise ConfigError(f"config file not found: {resolved}")
        source = str(resolved)
        try:
            loaded = OmegaConf.load(resolved)
        except Exception as exc:  # YAML syntax errors come from several parser classes
            raise ConfigError(f"{resolved}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if loaded is None or not OmegaConf.is_dict(loaded):
            raise ConfigError(f"{resolved}: expected a mapping of keys at the top level")
        layers.append(loaded)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"override {bad[0]!r} is not of the form key=value")
    if overrides:
        source = f"{source} + overrides {list(overrides)}"
        try:
            layers.append(OmegaConf.from_dotlist(list(overrides)))
        except OmegaConfBaseException as exc:
            raise ConfigError(f"overrides {list(overrides)}: {str(exc).splitlines()[0]}") from None
    return merge_config(schema, *layers, source=source)


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
