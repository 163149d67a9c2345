"""Op tracing and single-op conformance against the sim's known faults (fast: no model training)."""

from __future__ import annotations

import pytest
import torch

from turnout.backend import get_backend
from turnout.config import load_config
from turnout.qualify.opcall import _grouped_mm_f64, draw
from turnout.qualify.ops import check_op
from turnout.qualify.trace import TracedOp, trace_step
from turnout.qualify.workload import Settings, Workload, qualify_config
from turnout.train.build import model_args

from tests.qualify.conftest import DEBUG, EAGER


@pytest.fixture(scope="module")
def eager_ops():
    cfg = qualify_config(load_config(DEBUG, [EAGER]), Settings())
    args = model_args(cfg)
    x = torch.randint(0, args.vocab_size, (2, 32))
    work = Workload(cfg, args, [(x, x.roll(-1, 1))], "random", Settings())
    return trace_step(work, get_backend("cpu"), torch.float32)


def _op(ops, name):
    return next(o for o in ops if o.name == name)


def test_trace_marks_where_each_op_runs(eager_ops):
    names = {o.name for o in eager_ops}
    assert {"mm.default", "_softmax.default", "_softmax_backward_data.default", "embedding_dense_backward.default",
            "_grouped_mm.default"} <= names
    assert _op(eager_ops, "_softmax_backward_data.default").uses == {"backward"}
    assert "inference" in _op(eager_ops, "embedding.default").uses
    assert not any(o.packet == "detach" for o in eager_ops)
    keys = [(o.name, o.signature(), repr([a for a in o.args if not isinstance(a, (torch.Tensor, list))]))
            for o in eager_ops]
    assert len(keys) == len(set(keys)) or len({o.name for o in eager_ops}) < len(eager_ops)  # deduplicated calls


def test_draws_keep_indices_and_refresh_floats(eager_ops):
    op = next(o for o in eager_ops if o.packet.startswith("index_add"))
    a0, _ = draw(op.args, op.kwargs, 0, seed=1)
    a1, _ = draw(op.args, op.kwargs, 1, seed=1)
    assert torch.equal(a0[2], op.args[2]) and torch.equal(a1[2], op.args[2])  # the index tensor, reused
    assert not torch.equal(a1[3], op.args[3]) and a1[3].dtype == op.args[3].dtype


def test_healthy_target_matches_the_reference(eager_ops):
    res = check_op(_op(eager_ops, "_softmax_backward_data.default"), get_backend("sim:healthy"), get_backend("cpu"), 0)
    assert res.status == "pass" and res.fwd[0] == res.fwd[1]


def test_bad_softmax_backward_is_caught_directly_and_through_autograd(eager_ops):
    bad, cpu = get_backend("sim:bad-backward"), get_backend("cpu")
    direct = check_op(_op(eager_ops, "_softmax_backward_data.default"), bad, cpu, 0)
    assert direct.status == "fail" and direct.fwd[0].ratio > 0.5 and direct.fwd[1].ratio < 1e-3
    assert direct.inference_ok and not direct.training_ok  # seen only in backward
    fwd = check_op(_op(eager_ops, "_softmax.default"), bad, cpu, 0)
    assert fwd.fwd_why is None and fwd.bwd_why is not None  # exact forward, wrong gradient
    assert fwd.inference_ok and not fwd.training_ok


def test_lossy_matmul_fails_and_looks_like_bf16(eager_ops):
    mm = next(o for o in eager_ops if o.packet == "mm" and "inference" in o.uses)
    res = check_op(mm, get_backend("sim:lossy-accum"), get_backend("cpu"), 0)
    assert res.status == "fail" and not res.inference_ok and res.bf16_like


def test_host_fallback_and_missing_kernels(eager_ops, tmp_path):
    op = next(o for o in eager_ops if o.packet.startswith("index_add"))
    res = check_op(op, get_backend("sim:missing-ops"), get_backend("cpu"), 0)
    assert res.status == "pass" and res.fallback  # exact, but it ran on the host
    p = tmp_path / "raise.toml"
    p.write_text('[[fault]]\nkind = "missing_op"\nops = ["index_add"]\n')
    res = check_op(op, get_backend(f"sim:{p}"), get_backend("cpu"), 0)
    assert res.status == "missing" and not res.inference_ok and "not implemented" in res.error


def test_grouped_mm_float64_matches_the_kernel(eager_ops):
    for op in (o for o in eager_ops if o.packet == "_grouped_mm"):
        a, b, *rest = op.args
        offs = rest[0] if rest else op.kwargs.get("offs")
        ref = torch._grouped_mm(a, b, offs=offs)
        mine = _grouped_mm_f64(a.double(), b.double(), offs)
        assert mine.shape == ref.shape and torch.allclose(mine.float(), ref, rtol=1e-4, atol=1e-5), op.signature()


def test_unreplayable_op_is_skipped_not_failed():
    weird = TracedOp(torch.ops.aten.mm.default, (torch.ones(2, 3), torch.ones(4, 5)), {}, {"forward"})
    res = check_op(weird, get_backend("sim:healthy"), get_backend("cpu"), 0)
    assert res.status == "skipped" and "reference" in res.error and res.inference_ok
