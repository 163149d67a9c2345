"""Property: whatever value a config field is given, from `--set` or from a TOML file, the real `turnout train`
entry either accepts it or refuses it with exit 2 and exactly one line on stderr that names the key, never a
traceback; and what it accepts is exactly what an independent statement of the rules allows.

The command path is the cheapest one that validates a whole config: `turnout train --target cpu --fallback tpu`
loads and validates the config first, then builds each target before starting anything, and `tpu` is no device
turnout knows. So a config that is accepted ends in that target's one-line error, a refused one in its key's,
and no example builds a model or starts a process.
"""

import contextlib
import dataclasses
import datetime
import importlib.util
import io
import math
import subprocess
import sys
import tomllib
import unicodedata
from pathlib import Path
from typing import Any, get_origin, get_type_hints

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from turnout.backend import TargetError, get_backend
from turnout.cli import main
from turnout.config import Config, from_dict, load_config, to_toml

FIELDS = [(f"{name}.{f.name}", get_type_hints(cls)[f.name], f.metadata)
          for name, cls in get_type_hints(Config).items() for f in dataclasses.fields(cls)]
DEFAULTS = Config()
INT64 = (-(2 ** 63), 2 ** 63 - 1)
ACCEPTED = "turnout train: error: unknown target 'tpu'"  # what an accepted config runs into next


# ---- the rules, stated independently of turnout/config.py ------------------------------------------------------
def _clean(text: str) -> bool:
    return not any(unicodedata.category(c) in ("Cc", "Cs") for c in text)


def _scalar_ok(v: Any) -> bool:
    """What any field or model override may hold: no NaN or inf, 64-bit integers, clean text, no dates."""
    if isinstance(v, bool):
        return True
    if isinstance(v, int):
        return INT64[0] <= v <= INT64[1]
    if isinstance(v, float):
        return math.isfinite(v)
    return isinstance(v, str) and _clean(v)


def _valid(key: str, typ: type, meta: dict, v: Any) -> bool:
    origin = get_origin(typ) or typ
    choices = meta["choices"]
    if origin is list:  # every list field holds strings; data.sources also takes one path alone
        if meta.get("one_is_list") and isinstance(v, str):
            v = [v] if v else []
        ok = isinstance(v, list) and all(isinstance(x, str) and _clean(x) for x in v)
        ok = ok and (not choices or all(x in choices for x in v))
        if ok and "tensorboard" in v:
            ok = importlib.util.find_spec("tensorboard") is not None
        return ok
    if origin is dict:  # model.overrides: field names to scalars (the model checks names and values later)
        return isinstance(v, dict) and all(isinstance(k, str) and k.isascii() and k.isidentifier() and _scalar_ok(x)
                                           for k, x in v.items())
    if origin is bool:
        return isinstance(v, bool)
    if origin is int:
        ok = isinstance(v, int) and not isinstance(v, bool) and _scalar_ok(v)
    elif origin is float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and _scalar_ok(v)
    else:
        ok = isinstance(v, str) and _scalar_ok(v)
    if not ok or (choices and v not in choices):
        return False
    if key == "health.reference" and v:  # a target spec: the backend layer's rules (tests/backend) decide
        try:
            get_backend(v)
        except TargetError:
            return False
    lo, hi = meta["lo"], meta["hi"]
    if lo is not None and (v < lo or (meta["lo_open"] and v == lo)):
        return False
    if hi is not None and (v > hi or (meta["hi_open"] and v == hi)):
        return False
    t = DEFAULTS.train  # constraints between fields, against the other fields' defaults
    return {"train.steps": lambda: v >= t.warmup_steps, "train.warmup_steps": lambda: v <= t.steps,
            "train.grad_accum": lambda: t.batch_size % v == 0,
            "train.batch_size": lambda: v % t.grad_accum == 0}.get(key, lambda: True)()


# ---- values and their TOML spelling ------------------------------------------------------------------------------
def _toml_str(s: str) -> str:
    out = []
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)  # an unpaired surrogate stays raw: argv carries one when a byte is not UTF-8
    return '"' + "".join(out) + '"'


def literal(v: Any) -> str:
    """`v` as a TOML value."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, (datetime.date, datetime.time)):  # datetime is a date
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(literal(x) for x in v) + "]"
    return "{" + ", ".join(f"{_toml_str(k)} = {literal(x)}" for k, x in v.items()) + "}"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


TEXT = st.text(st.characters(exclude_categories=()), max_size=6)  # any code point, surrogates and controls too
SCALARS = st.one_of(
    st.booleans(), st.integers(-10, 300), st.integers(-(2 ** 200), 2 ** 200),
    st.sampled_from([2 ** 63 - 1, 2 ** 63, -(2 ** 63), -(2 ** 63) - 1]),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(-2, 2), TEXT,
    st.dates(), st.times(), st.datetimes(), st.datetimes(timezones=st.just(datetime.timezone.utc)))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(TEXT, SCALARS, max_size=2))


def _near(meta: dict) -> st.SearchStrategy:
    """Values at and beside a field's own bounds and choices, where off-by-one mistakes live."""
    edges = [b + d for b in (meta["lo"], meta["hi"]) if b is not None for d in (-1, -1e-9, 0, 1e-9, 1)]
    near = [st.sampled_from(edges)] if edges else []
    if meta["choices"]:
        near += [st.sampled_from(meta["choices"]), st.lists(st.sampled_from(meta["choices"]), max_size=2)]
    return st.one_of(VALUES, *near)


@st.composite
def field_and_value(draw):
    key, typ, meta = draw(st.sampled_from(FIELDS))
    return key, typ, meta, draw(_near(meta))


# ---- driving the real entry --------------------------------------------------------------------------------------
def _train(args: list[str], out: Path) -> tuple[int, str, str]:
    """`turnout train ... --target cpu --fallback tpu` in this process: exit code, stdout, stderr."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(["train", *args, "--out", str(out), "--target", "cpu", "--fallback", "tpu"])
        except SystemExit as e:  # argparse; no example should get here, and the assertions say so
            code = e.code
    return code, stdout.getvalue(), stderr.getvalue()


def _one_line_error(code: int, out: str, err: str) -> str:
    assert code == 2 and out == "", (code, out, err)
    assert err.endswith("\n") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err.rstrip("\n")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("config-values")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=field_and_value(), route=st.sampled_from(["set", "file"]))
def test_every_value_is_accepted_or_refused_in_one_line_as_the_rules_say(work, case, route):
    key, typ, meta, value = case
    text = literal(value)
    assert _same(value, tomllib.loads(f"v = {text}")["v"])  # the spelling above is right, so the rules apply
    section, name = key.split(".")
    if route == "set":
        args = ["--set", f"{key}={text}"]
    else:
        if any(unicodedata.category(c) == "Cs" for c in text):
            return  # a file cannot hold one as UTF-8; test_config covers text that is not UTF-8
        cfg = work / "c.toml"
        cfg.write_text(f"[{section}]\n{name} = {text}\n", encoding="utf-8")
        args = ["--config", str(cfg)]
    line = _one_line_error(*_train(args, work / "run"))
    assert not (work / "run").exists()  # accepted or not, nothing was started
    if _valid(key, typ, meta, value):
        assert line.startswith(ACCEPTED), line
        cfg = load_config(None, [f"{key}={text}"])
        got = getattr(getattr(cfg, section), name)
        if meta.get("one_is_list") and isinstance(value, str):  # one path alone is a list of it ("" of none)
            value = [value] if value else []
        assert _same(float(value) if typ is float else value, got)
        assert from_dict(tomllib.loads(to_toml(cfg))) == cfg  # what the run writes to config.toml reads back
    else:
        assert line.startswith("turnout train: error: ") and key in line and not line.startswith(ACCEPTED), line


@settings(max_examples=150, deadline=None)
@given(section=st.sampled_from([name for name in get_type_hints(Config)] + ["nosuch"]), name=TEXT)
def test_an_unknown_key_in_any_spelling_is_one_line(work, section, name):
    known = {f.name for f in dataclasses.fields(get_type_hints(Config).get(section, Config))}
    if "=" in name or name.strip() in known:
        return  # '=' ends the key; a known name is not the case under test
    line = _one_line_error(*_train(["--set", f"{section}.{name}=1"], work / "run"))
    assert line.startswith("turnout train: error: ") and not line.startswith(ACCEPTED), line


@settings(max_examples=150, deadline=None)
@given(rhs=TEXT | st.text(max_size=12))
def test_any_text_after_the_equals_sign_is_accepted_or_one_line(work, rhs):
    """`--set section.key=TEXT` reads TEXT as a TOML value and a bare word as a string, whatever TEXT is."""
    code, out, err = _train(["--set", f"model.preset={rhs}"], work / "run")
    line = _one_line_error(code, out, err)
    try:
        value = tomllib.loads(f"v = {rhs.strip()}")["v"]
    except ValueError:
        value = rhs.strip()
    assert line.startswith(ACCEPTED) == (isinstance(value, str) and _clean(value)), line


@pytest.mark.parametrize("args, key", [
    (["--set", "train.lr=nan"], "train.lr"),
    (["--set", "train.beta1=nan"], "train.beta1"),
    (["--set", "train.grad_clip=nan"], "train.grad_clip"),
    (["--set", "health.spike_sigma=nan"], "health.spike_sigma"),
    (["--set", "train.lr=inf"], "train.lr"),
    (["--set", f"train.seed={2 ** 64}"], "train.seed"),
    (["--config", "{dates}"], "train.steps"),
    (["--config", "{latin1}"], "latin1.toml: not UTF-8 text"),
])
def test_the_installed_command_refuses_in_one_line(args, key, tmp_path):
    """The same through a real `turnout` process: exit 2, one line, no traceback, before anything is imported
    that training needs (no --fallback: an accepted value here would start a run)."""
    (tmp_path / "dates.toml").write_text("[train]\nsteps = 1979-05-27\n")
    (tmp_path / "latin1.toml").write_bytes('[model]\npreset = "tïny"\n'.encode("latin-1"))
    args = [a.format(dates=tmp_path / "dates.toml", latin1=tmp_path / "latin1.toml") for a in args]
    r = subprocess.run([sys.executable, "-m", "turnout", "train", *args, "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == "", (r.returncode, r.stdout, r.stderr[-2000:])
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr and key in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()
