"""Run configuration: dataclass sections, TOML files, `--set section.key=value` overrides, one validation pass.

Every field carries a one-line doc and its constraints in `metadata`. `load_config` reads a TOML file, applies
overrides and validates everything once; any problem raises `ConfigError` whose message names the key
(e.g. ``train.lr: expected a number in (0.0, 1.0], got -1``). Nothing else in turnout edits a config after that.

Beyond each field's own range, every value must be something a run can use: floats finite (NaN passes every
comparison, so a range check alone lets it through), integers within TOML's 64 bits, strings free of control
characters and unpaired surrogates (they cannot be written back to config.toml), no dates or times anywhere.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import math
import tomllib
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints


class ConfigError(ValueError):
    """A configuration problem; the message is one line and names the offending key."""


INT_MIN, INT_MAX = -(2 ** 63), 2 ** 63 - 1  # TOML integers are 64-bit signed; torch and numpy seeds take them


def _f(default: Any, doc: str, *, choices: tuple | None = None, lo: float | None = None,
       hi: float | None = None, lo_open: bool = False, hi_open: bool = False, one_is_list: bool = False) -> Any:
    """A config field: default, one line of doc, optional choices or numeric range [lo, hi] (an end is open
    when lo_open / hi_open).

    On a list field, choices constrain each item, and `one_is_list` accepts a single item for a list of one."""
    meta = {"doc": doc, "choices": choices, "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open,
            "one_is_list": one_is_list}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelSection:
    """Which architecture to build."""

    preset: str = _f("tiny", "named ModelArgs preset (debug, tiny, small, v3-671b)")
    overrides: dict = _f({}, "ModelArgs fields that replace the preset's values, e.g. {n_layers = 2}")
    init: str = _f("", "start from this trained model (an HF DeepseekV3 directory, a turnout run or checkpoint "
                   "folder): its architecture, weights and tokenizer; fresh optimizer and schedule; the preset is "
                   "not used; empty starts from random weights")


@dataclass
class DataSection:
    """Where training text comes from."""

    sources: list[str] = _f([], "files or folders of .txt/.jsonl/.parquet (one path alone is a list of one); "
                            "empty means the embedded Shakespeare corpus", one_is_list=True)
    jsonl_field: str = _f("text", "field holding the text in .jsonl records, and column holding it in .parquet files")
    val_fraction: float = _f(0.01, "share of tokens held out for the validation loss", lo=0.0, hi=0.5, lo_open=True)
    cache_dir: str = _f("", "where tokenised shards are cached; empty means ~/.cache/turnout/data")
    tokenizer: str = _f("", "the model's own tokenizer (a tokenizer.json, or the folder holding it with its "
                        "tokenizer_config.json) to encode the data with; empty: model.init's, or else a byte-level "
                        "BPE trained on the sources")


@dataclass
class TrainSection:
    """The optimisation loop."""

    steps: int = _f(200, "optimizer steps to run", lo=1)
    batch_size: int = _f(8, "global batch in sequences per optimizer step (split over ranks and accumulation)", lo=1)
    seq_len: int = _f(256, "tokens per sequence", lo=2)
    seed: int = _f(0, "seed for weights, data order and dropout-free RNG streams", lo=0)
    # above 1 an AdamW step moves every weight by about its own size: no run survives that
    lr: float = _f(3e-3, "peak learning rate", lo=0.0, hi=1.0, lo_open=True)
    min_lr_ratio: float = _f(0.1, "final learning rate as a fraction of lr", lo=0.0, hi=1.0)
    warmup_steps: int = _f(20, "linear warmup steps", lo=0)
    schedule: str = _f("cosine", "learning-rate schedule after warmup", choices=("cosine", "wsd", "constant"))
    decay_fraction: float = _f(0.2, "wsd only: share of steps spent in the final decay", lo=0.0, hi=1.0)
    weight_decay: float = _f(0.1, "AdamW decoupled weight decay (not applied to norms and biases)", lo=0.0)
    beta1: float = _f(0.9, "AdamW beta1", lo=0.0, hi=1.0, hi_open=True)  # AdamW itself refuses 1
    beta2: float = _f(0.95, "AdamW beta2", lo=0.0, hi=1.0, hi_open=True)
    grad_clip: float = _f(1.0, "clip the global gradient norm to this; 0 disables", lo=0.0)
    grad_accum: int = _f(1, "micro-batches accumulated per optimizer step", lo=1)
    dtype: str = _f("auto", "compute dtype; auto takes the target's", choices=("auto", "fp32", "bf16", "fp16"))
    parallel: str = _f("ddp", "data parallelism when world size > 1", choices=("ddp", "fsdp"))
    expert_parallel: int = _f(1, "split each MoE layer's routed experts over this many ranks (an expert-parallel "
                              "group); must divide the world size and the routed expert count", lo=1)
    eval_interval: int = _f(50, "steps between held-out loss evaluations; 0 disables", lo=0)
    eval_batches: int = _f(4, "batches averaged per held-out evaluation", lo=1)
    log_interval: int = _f(10, "steps between progress lines when not on a terminal (metrics are written every step)",
                           lo=1)
    log_to: list[str] = _f([], "extra metric sinks besides metrics.jsonl: \"tensorboard\" writes RUN/tensorboard/ "
                           "event files", choices=("tensorboard",))


@dataclass
class CkptSection:
    """Checkpointing."""

    interval: int = _f(50, "steps between checkpoints; 0 saves only at the end", lo=0)
    keep: int = _f(3, "newest verified checkpoints kept on disk (a corrupt one is set aside, not counted)", lo=1)
    async_save: bool = _f(False, "write checkpoints in the background while training continues")


@dataclass
class HealthSection:
    """The health monitor, diagnosis by re-execution, rollback and the trust policy behind failover."""

    enabled: bool = _f(True, "judge every step before applying it; false trains blind")
    spike_sigma: float = _f(6.0, "a loss or grad-norm spike is above mean + this many sigma of the window", lo=0.0,
                            lo_open=True)
    spike_window: int = _f(128, "trailing steps whose loss and grad norm define normal", lo=4)
    spike_min_steps: int = _f(20, "steps observed before spike tests apply", lo=2)
    spike_ratio: float = _f(10.0, "also a spike: this many times the window's largest value", lo=1.0, lo_open=True)
    spike_patience: int = _f(3, "consecutive spiking steps before a rollback (runs often heal by themselves)", lo=1)
    checksums: bool = _f(True, "verify every matrix product of every step, forward and backward, by row checksums "
                         "(ABFT); a mismatch is an sdc finding")
    verify_interval: int = _f(0, "re-execute every Nth step in place to catch silent corruption; 0 disables", lo=0)
    rerun_rtol: float = _f(1e-6, "relative difference above which two runs of one step on one target differ",
                           lo=0.0)
    rerun_bitwise: bool = _f(True, "verification re-runs also compare the gradients bit for bit (a checksum); "
                             "false for targets whose kernels are not deterministic")
    replica_check_interval: int = _f(25, "data-parallel (DDP) ranks compare a bit-level checksum of their weights "
                                     "every N steps and before each checkpoint; 0 disables", lo=0)
    reference: str = _f("cpu", "target that re-executes a suspect step to arbitrate; empty disables")
    reference_rtol: float = _f(1e-3, "relative difference above which the target and the reference disagree", lo=0.0)
    skip_batches: int = _f(10, "after a rollback, data resumes this many global batches past the onset's batch",
                           lo=0)
    lr_cut: float = _f(0.9, "learning-rate factor when a problem recurs at the same place after a rollback",
                       lo=0.0, hi=1.0, lo_open=True)
    max_rollbacks: int = _f(5, "rollbacks allowed before the run stops as unrecoverable", lo=0)
    device_error_retries: int = _f(1, "in-place retries of a step that raised a device error", lo=0)
    max_device_errors: int = _f(3, "device errors within device_error_window that make a target untrusted", lo=1)
    device_error_window: int = _f(50, "steps over which device errors are counted", lo=1)
    max_faults: int = _f(3, "hardware-classified faults (SDC) within fault_window that make a target untrusted",
                         lo=1)
    fault_window: int = _f(200, "steps over which hardware faults are counted", lo=1)
    hang_factor: float = _f(10.0, "a step is hung after this many times the median step time", lo=1.0)
    hang_floor_s: float = _f(30.0, "a step is never called hung before this many seconds", lo=0.0, lo_open=True)
    hang_first_s: float = _f(300.0, "hang timeout for the first steps, before step times are known", lo=0.0,
                             lo_open=True)
    loss_check_steps: int = _f(3, "steps after a failover compared with the losses recorded before it", lo=0)
    loss_check_rtol: float = _f(0.05, "relative loss difference allowed by the post-failover check", lo=0.0)
    qualification: str = _f("", "qualify.json (or its folder) of the target's qualification: the run says at its "
                            "start whether that verdict applies (same model, kernels, dtype, device and software) and "
                            "records it; empty: none")


@dataclass
class Config:
    """A whole run's configuration."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    ckpt: CkptSection = field(default_factory=CkptSection)
    health: HealthSection = field(default_factory=HealthSection)

    def to_dict(self) -> dict:
        """Plain nested dict (JSON/TOML-safe)."""
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {f.name: f.type for f in dataclasses.fields(Config)}


def _section_types() -> dict[str, type]:
    hints = get_type_hints(Config)
    return {name: hints[name] for name in SECTIONS}


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string",
               list: "a list", dict: "a table"}


def _describe(meta: dict, typ: type, item: type | None = None) -> str:
    if meta.get("choices"):
        allowed = "one of " + ", ".join(map(str, meta["choices"]))
        return f"a list whose items are each {allowed}" if typ is list else allowed
    if typ is list and item is not None:
        return f"a list of {_TYPE_NAMES[item].removeprefix('a ').removeprefix('an ')}s"
    name = _TYPE_NAMES.get(typ, typ.__name__)
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and hi is not None:
        return f"{name} in {'(' if meta.get('lo_open') else '['}{lo}, {hi}{')' if meta.get('hi_open') else ']'}"
    if lo is not None:
        return f"{name} {'>' if meta.get('lo_open') else '>='} {lo}"
    return name


def _show(value: Any, limit: int = 80) -> str:
    """A value as an error message quotes it: its repr (escapes keep it on one line), cut to `limit` characters.

    An integer too long for repr (Python refuses over 4300 digits; TOML hex literals reach it) is named by its
    size instead."""
    try:
        text = repr(value)
    except ValueError:
        return f"an integer of {value.bit_length()} bits"
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _bad_scalar(value: Any) -> str | None:
    """Why a scalar is refused whatever its field expects (the message after the key), or None when it is fine."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"expected a finite number, got {_show(value)}"
    if isinstance(value, int) and not INT_MIN <= value <= INT_MAX:
        return f"{_show(value)} is out of range: TOML integers are 64-bit"
    if isinstance(value, str) and any(unicodedata.category(c) in ("Cc", "Cs") for c in value):
        return f"expected text without control characters or unpaired surrogates, got {_show(value)}"
    return None


def _origin_item(typ: Any) -> tuple[type, type | None]:
    """A field's type as (container or scalar type, item type of a list or None): list[str] -> (list, str)."""
    origin = get_origin(typ) or typ
    return origin, (get_args(typ) or (None,))[0] if origin is list else None


def _check_value(key: str, value: Any, typ: type, meta: dict) -> Any:
    """Type-check and range-check one value; return it (ints are accepted where floats are expected)."""
    origin, item = _origin_item(typ)
    want = _describe(meta, origin, item)
    if origin is list and meta.get("one_is_list") and item is not None and isinstance(value, item):
        value = [value] if value else []  # `--set data.sources=corpus/`: the list of that one path; "": none
    if origin is bool:
        ok = isinstance(value, bool)
    elif origin is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif origin is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif origin is list and item is not None:
        ok = isinstance(value, list) and all(isinstance(v, item) for v in value)
    else:
        ok = isinstance(value, origin)
    if not ok:
        raise ConfigError(f"{key}: expected {want}, got {_show(value)}")
    for v in value if origin is list else [value]:
        why = _bad_scalar(v)
        if why:
            raise ConfigError(f"{key}: {why}")
    if origin is float:
        value = float(value)  # an int within 64 bits always converts
    choices = meta.get("choices")
    if choices and (any(v not in choices for v in value) if origin is list else value not in choices):
        raise ConfigError(f"{key}: expected {want}, got {_show(value)}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value < lo or (meta.get("lo_open") and value == lo)):
        raise ConfigError(f"{key}: expected {want}, got {_show(value)}")
    if hi is not None and (value > hi or (meta.get("hi_open") and value == hi)):
        raise ConfigError(f"{key}: expected {want}, got {_show(value)}")
    return value


def _key(name: Any) -> str:
    """A key as given, for a message: as is when printable, else its repr (a newline in it stays on one line)."""
    return name if isinstance(name, str) and name.isprintable() else _show(name)


def from_dict(raw: dict) -> Config:
    """Build and validate a Config from a nested dict; unknown sections/keys and bad values raise ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a table of sections, got {type(raw).__name__}")
    types = _section_types()
    sections = {}
    for name, value in raw.items():
        if name not in types:
            raise ConfigError(f"{_key(name)}: unknown section (known: {', '.join(types)})")
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a table, got {_show(value)}")
    for name, cls in types.items():
        given = dict(raw.get(name, {}))
        hints = get_type_hints(cls)
        kwargs = {}
        known = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in given.items():
            if key not in known:
                raise ConfigError(f"{name}.{_key(key)}: unknown key (known: {', '.join(known)})")
            kwargs[key] = _check_value(f"{name}.{key}", value, hints[key], known[key].metadata)
        sections[name] = cls(**kwargs)
    cfg = Config(**sections)
    _cross_check(cfg)
    return cfg


def _cross_check(cfg: Config) -> None:
    """Constraints between fields."""
    t = cfg.train
    if t.batch_size % t.grad_accum:
        raise ConfigError(f"train.batch_size: {t.batch_size} must be divisible by train.grad_accum={t.grad_accum}")
    if t.warmup_steps > t.steps:
        raise ConfigError(f"train.warmup_steps: {t.warmup_steps} exceeds train.steps={t.steps}")
    for key, value in cfg.model.overrides.items():
        if not isinstance(key, str) or not (key.isascii() and key.isidentifier()):  # ModelArgs' names are ASCII,
            raise ConfigError(f"model.overrides.{_key(key)}: not a field name")  # and to_toml writes them bare
        if not isinstance(value, (bool, int, float, str)):
            raise ConfigError(f"model.overrides.{key}: expected a scalar, got {_show(value)}")
        why = _bad_scalar(value)
        if why:
            raise ConfigError(f"model.overrides.{key}: {why}")
    # checked here, not when the sink is built, so a run without the optional package fails before it starts
    if "tensorboard" in t.log_to and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("train.log_to: \"tensorboard\" needs the tensorboard package, which is not installed: "
                          "pip install 'turnout[tensorboard]'")


def parse_value(text: str) -> Any:
    """Parse the right-hand side of `--set key=value` as a TOML value; bare words become strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except ValueError:  # TOMLDecodeError, or an integer of over 4300 digits, which int() refuses
        return text


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` (or `section.table.key=value`) strings to a nested dict, returning a new dict."""
    out = copy.deepcopy(raw)  # TOML values include dates, which a JSON round trip cannot copy
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {_key(item)}: expected section.key=value")
        dotted, text = item.split("=", 1)
        parts = [p.strip() for p in dotted.strip().split(".")]
        if len(parts) < 2 or not all(parts):
            raise ConfigError(f"--set {_key(item)}: expected section.key=value")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{_key(dotted)}: {_key(p)} is not a table")
        node[parts[-1]] = parse_value(text.strip())
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> Config:
    """Read a TOML config (or start from defaults when path is None), apply overrides, validate once."""
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            text = p.read_bytes().decode("utf-8")  # TOML is UTF-8 whatever the locale says
        except UnicodeDecodeError as e:
            raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}: {e.reason}); TOML files are UTF-8") from None
        except OSError as e:
            raise ConfigError(f"{p}: cannot read the config file ({e.strerror or e})") from None
        try:
            raw = tomllib.loads(text)
        except ValueError as e:  # TOMLDecodeError, or an integer of over 4300 digits, which int() refuses
            raise ConfigError(f"{p}: not valid TOML ({e})") from None
    return from_dict(apply_overrides(raw, list(overrides)))


def to_toml(cfg: Config) -> str:
    """Serialise a Config back to TOML (round-trips through load_config)."""
    lines = []
    for name, section in cfg.to_dict().items():
        tables = {k: v for k, v in section.items() if isinstance(v, dict)}
        lines.append(f"[{name}]")
        for k, v in section.items():
            if not isinstance(v, dict):
                lines.append(f"{k} = {toml_value(v)}")
        for k, v in tables.items():
            lines.append(f"\n[{name}.{k}]")
            lines.extend(f"{kk} = {toml_value(vv)}" for kk, vv in v.items())
        lines.append("")
    return "\n".join(lines)


def toml_value(v: Any) -> str:
    """One value as TOML writes it; a table inline ({k = v, ...}: its keys are checked identifiers)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        # JSON's escapes are TOML's; ASCII-only output would write a character beyond the BMP as two \u escapes,
        # which TOML reads back as two unpaired surrogates
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {v!r} as TOML")


def describe_fields() -> list[tuple[str, Any, str]]:
    """(key, default, doc) for every field, for documenting the config file and its `--set section.key=value` keys."""
    return [(f["key"], f["default"], f["doc"]) for s in explain() for f in s["fields"]]


def explain(cfg: Config | None = None) -> list[dict]:
    """Every section and field, for `turnout config`: per section its name, doc and fields; per field its key,
    value in `cfg` (the defaults when None), default, what it accepts and doc."""
    cfg = cfg or Config()
    out = []
    for name, cls in _section_types().items():
        hints, section = get_type_hints(cls), getattr(cfg, name)
        fields = []
        for f in dataclasses.fields(cls):
            origin, item = _origin_item(hints[f.name])
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            fields.append({"key": f"{name}.{f.name}", "value": copy.deepcopy(getattr(section, f.name)),
                           "default": default, "accepts": _describe(f.metadata, origin, item),
                           "doc": f.metadata["doc"]})
        out.append({"section": name, "doc": (cls.__doc__ or "").strip(), "fields": fields})
    return out


__all__ = ["Config", "ConfigError", "load_config", "from_dict", "apply_overrides", "to_toml", "describe_fields",
           "explain", "toml_value",
           "ModelSection", "DataSection", "TrainSection", "CkptSection", "HealthSection"]
