"""Every class of bad config is a clear error naming the file and the key, before compute."""

import pytest
import yaml

from mtl_lab.cli import main
from mtl_lab.config import ConfigError, apply_overrides, dump_config, load_config, validate_config
from tests.conftest import tiny_raw


def _write(tmp_path, raw, name="c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    "changes,key,message",
    [
        ({"model.widht": 3}, "model.widht", "unknown key"),
        ({"surprise": 1}, "surprise", "unknown key"),
        ({"model.width": "wide"}, "model.width", "integer"),
        ({"model.width": -4}, "model.width", "greater than 0"),
        ({"n_main": [0]}, "n_main.0", "greater than 0"),
        ({"n_main": []}, "n_main", "at least 1"),
        ({"regimes": ["stl", "magic"]}, "regimes.1", "stl"),
        ({"training.lr": 0}, "training.lr", "greater than 0"),
        ({"mtl.weighting": "fixed"}, "mtl", "aux"),
        ({"task.family": "nope"}, "task.family", "relu_units"),
        ({"task.params.m_aux": 4, "task.params.m_main": 4}, "task.params", "m_aux"),
        ({"task.params.correlation": 1.5}, "task.params", "correlation"),
        ({"task.params.n_main": 5}, "task.params.n_main", "top level"),
        ({"task.params.bogus": 1}, "task.params.bogus", "unknown key|xtra"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, changes, key, message):
    path = _write(tmp_path, tiny_raw(**changes), "bad.yaml")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "bad.yaml" in text and key in text
    assert pytest.importorskip("re").search(message, text), text


def test_overlap_larger_than_k_main_is_named(tmp_path):
    raw = tiny_raw(**{"task.family": "sparse_linear",
                      "task.params": {"d": 20, "k_aux": 5, "k_main": 3, "overlap": 4,
                                      "n_aux": 10}})
    with pytest.raises(ConfigError, match=r"overlap \(4\) > k_main \(3\)"):
        validate_config(raw, "x.yaml")


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "broken.yaml"
    bad.write_text("regimes: [stl\n")
    with pytest.raises(ConfigError, match="broken.yaml.*YAML"):
        load_config(bad)


def test_overrides_and_resolved_config_roundtrip(tmp_path, capsys):
    path = _write(tmp_path, tiny_raw())
    cfg = load_config(path, ["model.width=7", "seeds=[3, 4]", "training.lr=1e-3"])
    assert cfg.model.width == 7 and cfg.seeds == [3, 4] and cfg.training.lr == 1e-3
    again = validate_config(yaml.safe_load(dump_config(cfg)))
    assert again == cfg
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["nonsense"])
    with pytest.raises(ConfigError, match="model.depht"):
        load_config(path, ["model.depht=2"])
    assert main(["config", str(path), "model.width=9"]) == 0
    assert "width: 9" in capsys.readouterr().out


def test_cli_reports_config_errors_without_traceback(tmp_path, capsys):
    path = _write(tmp_path, tiny_raw(**{"model.width": -1}))
    assert main(["run", str(path), "-o", str(tmp_path / "out")]) == 2
    assert "model.width" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing was started
