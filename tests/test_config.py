import json

import pytest

from studio.config import ConfigError, load_settings


def test_defaults_live_under_the_home(tmp_path):
    s = load_settings({"STUDIO_HOME": str(tmp_path)})
    assert s.home == tmp_path
    assert s.database_url == f"sqlite:///{tmp_path / 'studio.db'}"
    assert s.broker_url is None and s.device == "auto" and s.load_plugins is None
    assert s.source["home"] == "env STUDIO_HOME" and s.source["database_url"] == "default"


def test_env_wins_over_config_file_which_wins_over_defaults(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"device": "cpu", "broker_url": "redis://file"}))
    s = load_settings({"STUDIO_HOME": str(tmp_path), "STUDIO_BROKER_URL": "redis://env"})
    assert s.device == "cpu" and s.source["device"] == "config.json"
    assert s.broker_url == "redis://env" and s.source["broker_url"] == "env STUDIO_BROKER_URL"


def test_load_plugins_empty_means_none(tmp_path):
    assert load_settings({"STUDIO_HOME": str(tmp_path), "STUDIO_LOAD_PLUGINS": ""}).load_plugins == ()
    assert load_settings({"STUDIO_HOME": str(tmp_path), "STUDIO_LOAD_PLUGINS": "a, b"}).load_plugins == ("a", "b")


@pytest.mark.parametrize("env", [{"STUDIO_DEVICE": "tpu"}, {"STUDIO_MAX_ATTEMPTS": "0"}, {"STUDIO_MAX_ATTEMPTS": "x"}])
def test_bad_values_raise_config_error(tmp_path, env):
    with pytest.raises(ConfigError):
        load_settings({"STUDIO_HOME": str(tmp_path), **env})


def test_unreadable_config_file_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json"):
        load_settings({"STUDIO_HOME": str(tmp_path)})
