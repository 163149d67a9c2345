"""sim profiles: shipped ones load by name, user files by path, and every schema problem is a one-line TargetError."""

import pytest

from turnout.backend import TargetError, get_backend, shipped_profiles
from turnout.backend.sim import SimBackend
from turnout.backend.sim_profile import load_profile, op_name

REQUIRED = {"healthy", "lossy-accum", "bad-backward", "no-bf16", "flaky", "hang", "bad-allreduce"}


def write(tmp_path, text, name="p.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_required_profiles_ship():
    assert REQUIRED <= set(shipped_profiles())


@pytest.mark.parametrize("name", shipped_profiles())
def test_shipped_profile_loads_by_name(name):
    b = get_backend(f"sim:{name}")
    assert isinstance(b, SimBackend)
    assert b.name == f"sim:{name}"
    assert b.device_type == "cpu" and b.collective == "gloo"
    ok, why = b.availability()
    assert ok and why == b.profile.description and why
    assert b.default_dtypes == (b.profile.dtype,)
    assert b.device_count() == 1 and str(b.device()) == "cpu"


def test_shipped_profiles_say_what_they_do():
    """The documented faults of each required profile, exactly."""
    kinds = {n: [f.kind for f in load_profile(n).faults] for n in REQUIRED}
    assert kinds == {"healthy": [], "lossy-accum": ["lossy_accum"], "bad-backward": ["bad_backward"],
                     "no-bf16": [], "flaky": ["sdc", "sdc", "device_error", "device_error"], "hang": ["hang"],
                     "bad-allreduce": ["sdc"]}
    assert load_profile("bad-allreduce").faults[0].ops == ("c10d::allreduce",)
    assert load_profile("no-bf16").unsupported_dtypes == ("bf16",)
    assert load_profile("bad-backward").faults[0].error == 0.05
    hang = load_profile("hang").faults[0]
    assert (hang.at_steps, hang.seconds) == ((60,), 3600.0)


def test_user_profile_from_path(tmp_path):
    path = write(tmp_path, '[profile]\ndescription = "mine"\nseed = 3\n\n[[fault]]\nkind = "bad_backward"\n'
                           'ops = ["aten::_softmax_backward_data"]\nerror = 0.1\n')
    b = get_backend(f"sim:{path}")
    assert b.availability() == (True, "mine")
    assert b.profile.seed == 3 and b.profile.faults[0].ops == ("_softmax_backward_data",)
    assert b.name == f"sim:{path}"
    pinned = get_backend(f"sim:{path}:bf16")
    assert pinned.spec.dtype == "bf16" and pinned.compute_dtype_name() == "bf16"


def test_spec_dtype_overrides_profile_dtype(tmp_path):
    path = write(tmp_path, '[profile]\ndtype = "bf16"\n')
    b = get_backend(f"sim:{path}")
    assert b.default_dtypes == ("bf16",) and b.compute_dtype_name() == "bf16"
    assert get_backend(f"sim:{path}:fp32").compute_dtype_name() == "fp32"
    assert get_backend("sim:healthy:bf16").compute_dtype_name() == "bf16"


def test_op_names_normalise():
    assert op_name("aten::index_add_") == op_name("aten.index_add") == op_name("index_add_") == "index_add"
    assert op_name("_softmax_backward_data") == "_softmax_backward_data"
    assert op_name("__and__") == "__and__"
    assert op_name("aten.mm.out") == op_name("mm.default") == "mm"
    assert op_name("c10d::allreduce_") == op_name("c10d.allreduce") == "c10d::allreduce"


def test_unknown_profile_name_lists_shipped():
    with pytest.raises(TargetError) as e:
        get_backend("sim:flakey")
    msg = str(e.value)
    assert "flakey" in msg and all(n in msg for n in REQUIRED) and "\n" not in msg


def test_missing_profile_file(tmp_path):
    with pytest.raises(TargetError, match="not found"):
        get_backend(f"sim:{tmp_path / 'nope.toml'}")


BAD = [
    ('[[fault]]\nkind = "sdcc"\nops = ["mm"]\n', "fault[0].kind", "sdcc"),
    ('[[fault]]\nops = ["mm"]\n', "fault[0].kind", "missing"),
    ('[[fault]]\nkind = "bad_backward"\nops = ["mm"]\nerror = "big"\n', "fault[0].error", "expected a number"),
    ('[[fault]]\nkind = "bad_backward"\nops = "mm"\nerror = 0.1\n', "fault[0].ops", "expected a list"),
    ('[[fault]]\nkind = "bad_backward"\nops = ["mm"]\nerror = 0.1\nerorr = 1\n', "fault[0].erorr", "unknown key"),
    ('[[fault]]\nkind = "bad_backward"\nops = ["mm"]\n', "fault[0].error", "required"),
    ('[[fault]]\nkind = "bad_backward"\nops = ["mmm"]\nerror = 0.1\n', "fault[0].ops[0]", "not an aten op"),
    ('[profile]\nseed = "zero"\n', "profile.seed", "expected an integer"),
    ('[profile]\nseed = true\n', "profile.seed", "expected an integer"),
    ('[profile]\ncolour = "red"\n', "profile.colour", "unknown key"),
    ('[profile]\ndtype = "fp64"\n', "profile.dtype", "fp64"),
    ('[profile]\nunsupported_dtypes = ["bf17"]\n', "profile.unsupported_dtypes[0]", "bf17"),
    ('[profile]\ndtype = "bf16"\nunsupported_dtypes = ["bf16"]\n', "profile.dtype", "unsupported_dtypes"),
    ('[extra]\nx = 1\n', "extra", "unknown key"),
    ('[[fault]]\nkind = "sdc"\nops = ["mm"]\n', "fault[0]", "exactly one of at_steps, every, rate"),
    ('[[fault]]\nkind = "sdc"\nops = ["mm"]\nat_steps = [1]\nrate = 0.1\n', "fault[0]", "exactly one"),
    ('[[fault]]\nkind = "sdc"\nops = ["mm"]\nrate = 1.5\n', "fault[0].rate", "[0, 1]"),
    ('[[fault]]\nkind = "sdc"\nops = ["mm"]\nrate = 0.1\ncall = 2\n', "fault[0].call", "rate"),
    ('[[fault]]\nkind = "sdc"\nops = ["mm"]\nat_steps = [1]\nfrom_step = 2\n', "fault[0].from_step", "every"),
    ('[[fault]]\nkind = "sdc"\nops = ["mm"]\nat_steps = []\n', "fault[0].at_steps", "non-empty"),
    ('[[fault]]\nkind = "sdc"\nops = ["mm"]\nat_steps = [1]\nbit = 64\n', "fault[0].bit", "[0, 63]"),
    ('[[fault]]\nkind = "device_error"\nevery = 5\nfrom_step = 10\nuntil_step = 3\n', "fault[0].until_step",
     "before"),
    ('[[fault]]\nkind = "hang"\nat_steps = [1]\n', "fault[0].seconds", "required"),
    ('[[fault]]\nkind = "missing_op"\nops = ["mm"]\nslowdown = 0.5\n', "fault[0].slowdown", ">= 1"),
    ('[[fault]]\nkind = "lossy_accum"\nprecision = "int4"\n', "fault[0].precision", "int4"),
    ('[[fault]]\nkind = "device_error"\nat_steps = [1]\nseconds = 3\n', "fault[0].seconds", "unknown key"),
    ('[[fault]]\nkind = "sdc"\nops = ["mm"]\nat_steps = [1]\nranks = []\n', "fault[0].ranks", "non-empty"),
    ('[[fault]]\nkind = "bad_backward"\nops = ["mm"]\nerror = 0.1\nranks = [-1]\n', "fault[0].ranks", ">= 0"),
    ('[profile\nseed = 0\n', None, "invalid TOML"),
]


@pytest.mark.parametrize("text,key,why", BAD, ids=[f"{b[1]}:{b[2]}" for b in BAD])
def test_bad_profile_raises_target_error_naming_file_and_key(tmp_path, text, key, why):
    path = write(tmp_path, text)
    with pytest.raises(TargetError) as e:
        get_backend(f"sim:{path}")
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and why in msg
    if key:
        assert f"{key}:" in msg


def test_a_fault_for_some_ranks_exists_only_in_their_processes(tmp_path):
    """`ranks = [1]`: rank 1's injector schedules the fault, rank 0's (and a single process's) does not."""
    from turnout.backend.sim_mode import Injector

    prof = load_profile(str(write(tmp_path, '[[fault]]\nkind = "sdc"\nops = ["c10d::allreduce"]\nat_steps = [3]\n'
                                               'ranks = [1]\n')))
    assert prof.faults[0].ranks == (1,)
    assert Injector(prof, "sim:x", rank=1).schedule.faults and not Injector(prof, "sim:x", rank=0).schedule.faults
