import dataclasses
import importlib.machinery
import importlib.util
import subprocess
import sys
from typing import get_type_hints

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
    (["train.lr=-1"], "train.lr", "(0.0, 1.0]"),
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


def _float_keys() -> list[str]:
    """Every float field of every section: the checks below cover a field added later without being told."""
    from turnout.config import Config

    return [f"{name}.{f.name}" for name, cls in get_type_hints(Config).items() for f in dataclasses.fields(cls)
            if get_type_hints(cls)[f.name] is float]


def test_float_keys_are_found():
    keys = _float_keys()
    assert {"train.lr", "train.beta1", "train.grad_clip", "health.spike_sigma", "data.val_fraction"} <= set(keys)


@pytest.mark.parametrize("key", _float_keys())
@pytest.mark.parametrize("literal", ["nan", "+inf", "-inf"])
def test_non_finite_floats_are_refused_in_every_float_field_from_set_and_toml(key, literal, tmp_path):
    # NaN compares false with every bound, so a range check alone lets it through
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{key}={literal}"])
    assert str(e.value) == f"{key}: expected a finite number, got {float(literal)!r}"
    section, name = key.split(".")
    p = tmp_path / "c.toml"
    p.write_text(f"[{section}]\n{name} = {literal}\n")
    with pytest.raises(ConfigError, match=rf"^{key}: expected a finite number"):
        load_config(p)


def test_non_finite_model_overrides_are_refused():
    with pytest.raises(ConfigError, match=r"^model.overrides.rope_theta: expected a finite number, got nan$"):
        load_config(None, ["model.overrides.rope_theta=nan"])


@pytest.mark.parametrize("override, fragment", [
    ("train.beta1=1", "[0.0, 1.0)"),  # AdamW refuses a beta of 1
    ("train.beta2=1.0", "[0.0, 1.0)"),
    ("train.lr=2", "(0.0, 1.0]"),  # above 1 an AdamW step moves each weight by about its own size
])
def test_values_adamw_cannot_use_are_refused(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value).startswith(override.split("=")[0]) and fragment in str(e.value)
    assert load_config(None, ["train.beta1=0.999", "train.lr=1"]).train.beta1 == 0.999


def test_a_config_file_that_is_not_utf8_is_refused_naming_the_file(tmp_path):
    p = tmp_path / "latin1.toml"
    p.write_bytes('[model]\npreset = "tïny"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).startswith(f"{p}: not UTF-8 text") and "\n" not in str(e.value)


@pytest.mark.parametrize("literal", ["1979-05-27", "1979-05-27T07:32:00", "1979-05-27T07:32:00Z", "07:32:00"])
def test_toml_dates_and_times_are_refused_naming_the_key(literal, tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(f"[train]\nsteps = {literal}\n")
    with pytest.raises(ConfigError, match=r"^train.steps: expected an integer >= 1, got datetime"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"^train.steps: expected an integer"):
        load_config(None, [f"train.steps={literal}"])
    with pytest.raises(ConfigError, match=r"^data.sources: expected a list of strings"):
        load_config(None, [f"data.sources=[{literal}]"])
    with pytest.raises(ConfigError, match=r"^model.overrides.n_layers: expected a scalar"):
        load_config(None, [f"model.overrides.n_layers={literal}"])


def test_integers_beyond_64_bits_are_refused(tmp_path):
    assert load_config(None, [f"train.seed={2**63 - 1}"]).train.seed == 2**63 - 1
    for key in ("train.seed", "train.lr", "model.overrides.n_layers"):
        with pytest.raises(ConfigError, match=rf"^{key}: {2**63} is out of range: TOML integers are 64-bit$"):
            load_config(None, [f"{key}={2**63}"])
    p = tmp_path / "c.toml"
    p.write_text("[train]\nsteps = 0x" + "f" * 5000 + "\n")  # hex is exempt from int()'s 4300-digit limit
    with pytest.raises(ConfigError, match=r"^train.steps: an integer of 20000 bits is out of range"):
        load_config(p)
    p.write_text("[train]\nsteps = " + "9" * 5000 + "\n")  # tomllib raises ValueError, not TOMLDecodeError
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"^train.steps: expected an integer >= 1, got '9999"):
        load_config(None, ["train.steps=" + "9" * 5000])


def test_text_with_control_characters_or_surrogates_is_refused_and_other_unicode_round_trips(tmp_path):
    p = tmp_path / "c.toml"
    for escaped in ("a\\u0000b", "tab\\there", "del\\u007f"):
        p.write_text(f'[data]\njsonl_field = "{escaped}"\n')
        with pytest.raises(ConfigError, match=r"^data.jsonl_field: expected text without control characters"):
            load_config(p)
    # a byte of argv that is not UTF-8 reaches Python as an unpaired surrogate, which config.toml cannot hold
    with pytest.raises(ConfigError, match=r"^data.jsonl_field: expected text without control characters or "
                       r"unpaired surrogates, got '\\udcff'$"):
        load_config(None, ["data.jsonl_field=\udcff"])
    with pytest.raises(ConfigError, match=r"^data.sources: expected text without control"):
        load_config(None, ['data.sources=["a\\u001bb.txt"]'])
    cfg = load_config(None, ['data.sources=["\U0001F600 é 中.txt"]', 'data.jsonl_field="текст"'])
    p.write_text(to_toml(cfg), encoding="utf-8")
    assert load_config(p) == cfg  # a character beyond the BMP is written as itself, not as two surrogates


def test_a_key_with_a_line_break_is_quoted_on_one_line():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.a\nb=1"])
    assert str(e.value).startswith("train.'a\\nb': unknown key") and "\n" not in str(e.value)


def test_one_data_source_is_a_list_of_one(tmp_path):
    assert load_config(None, ["data.sources=corpus/"]).data.sources == ["corpus/"]
    assert load_config(None, ['data.sources="train.parquet"']).data.sources == ["train.parquet"]
    p = tmp_path / "c.toml"
    p.write_text('[data]\nsources = "train.parquet"\n')
    cfg = load_config(p)
    assert cfg.data.sources == ["train.parquet"] and load_config(None, []).data.sources == []
    assert 'sources = ["train.parquet"]' in to_toml(cfg)
    # only a single string becomes a list; other fields and other values are still checked
    with pytest.raises(ConfigError, match=r"^data.sources: expected a list of strings, got 3"):
        load_config(None, ["data.sources=3"])
    with pytest.raises(ConfigError, match=r"^train.log_to: expected a list"):
        load_config(None, ['train.log_to="tensorboard"'])
    with pytest.raises(ConfigError, match=r"^data.sources: expected text without control"):
        load_config(None, ['data.sources="a\\u001bb.txt"'])
