"""Config loading refuses unknown keys and wrong types, naming the key."""

from dataclasses import dataclass, field

import pytest

from pipeline.config import ExtractConfig
from vidfuse.config import config_hash, load_config, save_config
from vidfuse.errors import ConfigError


@dataclass
class Inner:
    n: int = 3


@dataclass
class Outer:
    a: int = 1
    inner: Inner = field(default_factory=Inner)


def test_overrides_and_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("a: 7\ninner:\n  n: 9\n")
    cfg = load_config(Outer, path, ["inner.n=4"])
    assert cfg.a == 7 and cfg.inner.n == 4


@pytest.mark.parametrize(
    "overrides, key",
    [(["b=1"], "b"), (["inner.m=2"], "inner.m"), (["a=notanint"], "a")],
)
def test_bad_override_names_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(Outer, overrides=overrides)


def test_bad_file_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("a: 1\ntypo_key: 2\n")
    with pytest.raises(ConfigError, match="typo_key") as err:
        load_config(Outer, path)
    assert "bad.yaml" in str(err.value)


def test_not_a_mapping_and_missing(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Outer, path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Outer, overrides=["a"])


def test_save_roundtrip_and_hash(tmp_path):
    cfg = load_config(ExtractConfig, overrides=["output.shard_size=5"])
    save_config(cfg, tmp_path / "x.yaml")
    again = load_config(ExtractConfig, tmp_path / "x.yaml")
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)
    assert config_hash(load_config(ExtractConfig)) != config_hash(cfg)
