import importlib.machinery
import importlib.util
import subprocess
import sys

import pytest

from turnout.config import ConfigError, describe_fields, from_dict, load_config, to_toml


def test_defaults_validate_and_round_trip_through_toml(tmp_path):
    cfg = load_config(None, ["train.lr=0.01", "model.overrides.n_layers=2", "data.sources=['a.txt']"])
    assert cfg.train.lr == 0.01 and cfg.model.overrides == {"n_layers": 2} and cfg.data.sources == ["a.txt"]
    p = tmp_path / "c.toml"
    p.write_text(to_toml(cfg))
    assert load_config(p) == cfg


def test_shipped_configs_load():
    for name in ("tiny", "debug"):
        cfg = load_config(f"configs/{name}.toml")
        assert cfg.model.preset == name


@pytest.mark.parametrize("override, key, fragment", [
    (["train.lr=-1"], "train.lr", "> 0"),
    (["train.steps=1.5"], "train.steps", "an integer"),
    (["train.steps=true"], "train.steps", "an integer"),
    (["train.schedule=linear"], "train.schedule", "one of cosine, wsd, constant"),
    (["train.nope=1"], "train.nope", "unknown key"),
    (["nosuch.key=1"], "nosuch", "unknown section"),
    (["data.val_fraction=0"], "data.val_fraction", "(0.0, 0.5]"),
    (["ckpt.async_save=1"], "ckpt.async_save", "true or false"),
    (["train.batch_size=6", "train.grad_accum=4"], "train.batch_size", "divisible"),
    (["train.lr"], "--set train.lr", "section.key=value"),
    (["train.log_to=['wandb']"], "train.log_to", "each one of tensorboard"),
    (["train.log_to=tensorboard"], "train.log_to", "a list"),
])
def test_errors_name_the_key(override, key, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, override)
    msg = str(e.value)
    assert msg.startswith(key) and fragment in msg and "\n" not in msg


def _tensorboard_installed(monkeypatch, installed: bool) -> None:
    """Make the config's package check see tensorboard as installed or not, whatever this machine has."""
    real = importlib.util.find_spec

    def find_spec(name, *args):
        if name != "tensorboard":
            return real(name, *args)
        return importlib.machinery.ModuleSpec(name, None) if installed else None

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_log_to_from_set_and_toml_round_trips(tmp_path, monkeypatch):
    _tensorboard_installed(monkeypatch, True)
    assert load_config().train.log_to == []
    cfg = load_config(None, ['train.log_to=["tensorboard"]'])
    assert cfg.train.log_to == ["tensorboard"]
    p = tmp_path / "c.toml"
    p.write_text(to_toml(cfg))
    assert 'log_to = ["tensorboard"]' in p.read_text() and load_config(p) == cfg
    p.write_text('[train]\nlog_to = ["tensorboard"]\n')
    assert load_config(p).train.log_to == ["tensorboard"]


def test_log_to_tensorboard_without_the_package_names_the_key_and_the_fix(monkeypatch):
    _tensorboard_installed(monkeypatch, False)
    assert load_config().train.log_to == []  # only asking for the sink needs the package
    with pytest.raises(ConfigError) as e:
        load_config(None, ['train.log_to=["tensorboard"]'])
    msg = str(e.value)
    assert msg.startswith("train.log_to") and "pip install 'turnout[tensorboard]'" in msg and "\n" not in msg


def test_int_accepted_for_float_and_bad_toml(tmp_path):
    assert from_dict({"train": {"lr": 1}}).train.lr == 1.0
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nlr = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_every_field_has_a_doc():
    fields = describe_fields()
    assert len(fields) > 20
    for key, _, doc in fields:
        assert doc and len(doc) > 10, key
    keys = {k for k, _, _ in fields}
    # names scripts rely on
    for k in ("model.preset", "train.steps", "train.batch_size", "train.seq_len", "train.seed", "train.lr",
              "ckpt.interval", "ckpt.keep"):
        assert k in keys


def test_cli_config_error_is_one_line_exit_2():
    # a bad override travels through the same loader the commands use; checked end-to-end on `targets` specs
    r = subprocess.run([sys.executable, "-m", "turnout", "targets", "nope"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
