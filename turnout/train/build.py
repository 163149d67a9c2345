"""The one place that wires config, backend, model, data and optimizer together."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from turnout.backend import Backend, get_backend
from turnout.config import Config, ConfigError
from turnout.data import Dataset, Tokenizer, prepare_dataset
from turnout.model.args import ModelArgs
from turnout.model.transformer import Transformer
from turnout.model.flops import flops_per_token, param_counts
from turnout.train.dist import DistInfo, wrap_model
from turnout.train.expert_parallel import ExpertLayout, build_layout
from turnout.train.init import init_args, init_tokenizer, load_init_weights
from turnout.train.optim import build_optimizer
from turnout.train.step import StepRunner


def model_args(config: Config) -> ModelArgs:
    """ModelArgs from `model.preset` + `model.overrides` (or from `model.init`'s model + the overrides it
    allows); problems raise ConfigError naming the key."""
    if config.model.init:
        return init_args(config)
    try:
        return ModelArgs.preset(config.model.preset, **config.model.overrides)
    except ValueError as e:
        msg = str(e)
        bad = next((k for k in config.model.overrides if k in msg), None)
        key = f"model.overrides.{bad}" if bad else "model.preset"
        raise ConfigError(f"{key}: {msg}") from None


def param_count(config: Config) -> int:
    """Parameters of the configured model, MTP modules included: what weights, gradients and optimizer state hold."""
    return param_counts(model_args(config), mtp=True)[0]


def refusals(backend: Backend, config: Config, world_size: int = 1, params: int | None = None) -> list[str]:
    """Why `backend` cannot run `config` over `world_size` devices (empty when it can); `params`: the parameter
    count of a model the config does not describe (a transformers model), else the configured model's.

    Backend.validate checks memory against the parameter count, which the backend layer cannot work out (model/
    sits above it), so every caller asks here rather than counting parameters itself."""
    count = param_count(config) if params is None else params
    return backend.validate(config, world_size=world_size, param_count=count)


def data_cache_dir(config: Config) -> Path:
    return Path(config.data.cache_dir or os.environ.get("TURNOUT_DATA_CACHE", "~/.cache/turnout/data")).expanduser()


def build_dataset(config: Config, args: ModelArgs | None, info: DistInfo, log: Callable[[str], None] | None, *,
                  vocab_size: int | None = None, tokenizer: Tokenizer | None = None) -> Dataset:
    """Tokenise the configured sources once (rank 0 first, so ranks never race on the cache) and open them.
    `vocab_size` and `tokenizer` stand in for the model args' and the config's for a model the config does not
    describe."""
    kwargs = dict(sources=config.data.sources or None, vocab_size=vocab_size or args.vocab_size,
                  cache_dir=data_cache_dir(config), val_fraction=config.data.val_fraction,
                  jsonl_field=config.data.jsonl_field, tokenizer=tokenizer or init_tokenizer(config))
    if info.world_size > 1:
        if info.is_main:
            prepare_dataset(**kwargs, log=log)
        dist.barrier()
        return prepare_dataset(**kwargs, log=None)
    return prepare_dataset(**kwargs, log=log)


@dataclass
class Built:
    """Everything a training run holds, wired for one target."""

    config: Config
    backend: Backend
    info: DistInfo
    args: ModelArgs | None  # None: a model the config does not describe (build_model's `module`)
    model: torch.nn.Module  # possibly DDP-wrapped (FSDP2 shards in place)
    inner: torch.nn.Module  # the Transformer (or the module given) itself
    optimizer: torch.optim.Optimizer
    runner: StepRunner
    dtype: torch.dtype
    flops_per_token: float
    params: int
    active_params: int
    experts: ExpertLayout | None = None  # train.expert_parallel > 1: the (dp, ep) mesh and the split weights


def layout_problem(config: Config, world_size: int, args: ModelArgs | None) -> str | None:
    """Why `train.expert_parallel` cannot split `args`' experts over `world_size` ranks (None when it can); with
    `args` None (a model the config does not describe) only 1 is allowed."""
    ep = config.train.expert_parallel
    if ep == 1:
        return None
    if args is None:
        return f"train.expert_parallel: {ep} needs turnout's own MoE model; a model of your own trains with 1"
    if args.n_routed_experts == 0 or args.n_layers <= args.n_dense_layers:
        return f"train.expert_parallel: {ep} needs routed experts; this model has no MoE layer"
    if world_size % ep:
        return (f"train.expert_parallel: {ep} does not divide the world size {world_size} (--nproc {world_size}); "
                f"1 trains without splitting the experts")
    if args.n_routed_experts % ep:
        return f"train.expert_parallel: {ep} does not divide the model's {args.n_routed_experts} routed experts"
    return None


def check_config(config: Config, backend: Backend, info: DistInfo, module: torch.nn.Module | None = None
                 ) -> ModelArgs | None:
    """ModelArgs for the config (None with `module`), after the target's refusals (raised as ConfigError with every
    reason)."""
    args = model_args(config) if module is None else None
    t = config.train
    per_rank = t.batch_size // info.world_size if t.batch_size % info.world_size == 0 else None
    if per_rank is None or per_rank % t.grad_accum:
        raise ConfigError(f"train.batch_size: {t.batch_size} must split evenly over {info.world_size} rank(s) x "
                          f"{t.grad_accum} micro-batch(es)")
    if args is not None and t.seq_len > args.max_seq_len:
        raise ConfigError(f"train.seq_len: {t.seq_len} exceeds the model's max_seq_len {args.max_seq_len}")
    problem = layout_problem(config, info.world_size, args)
    if problem:
        raise ConfigError(problem)
    if config.model.init and module is None:  # a source without a usable tokenizer fails before any weight is read
        init_tokenizer(config)
    params = None if module is None else sum(p.numel() for p in module.parameters())
    reasons = refusals(backend, config, info.world_size, params)
    if reasons:
        raise ConfigError(f"target {backend.name} refuses this config: " + "; ".join(reasons))
    return args


def build_model(config: Config, target: str | Backend, info: DistInfo = DistInfo(),
                module: torch.nn.Module | None = None) -> Built:
    """Backend, model (seeded, on the target, wrapped for the world size), optimizer and step runner. `module`: a
    model to train instead of the configured Transformer (on the CPU, with the Transformer's training interface,
    e.g. turnout.model.foreign.HFCausalLM); it is moved to the target, not copied."""
    backend = target if isinstance(target, Backend) else get_backend(target)
    args = check_config(config, backend, info, module)
    if module is not None:
        model = module
    else:
        torch.manual_seed(config.train.seed)  # identical initial weights on every rank and every target
        model = Transformer(args)
        if config.model.init:  # weights from a trained model, before the model is placed and wrapped
            load_init_weights(model, config)
    model.to(backend.device(info.local_rank))
    inner = model
    experts = None
    if config.train.expert_parallel > 1:
        experts = build_layout(model, config.train.expert_parallel, info.world_size, backend.device_type)
    model = wrap_model(model, config.train.parallel, info, backend,
                       ignore=list(experts.params.values()) if experts else ())
    optimizer = build_optimizer(model, config.train, apart=list(experts.params.values()) if experts else ())
    dtype = backend.compute_dtype(config)
    sharded = info.world_size > 1 and config.train.parallel == "fsdp"
    runner = StepRunner(model, optimizer, backend, dtype, config.train.grad_clip, sharded,
                        checksums=config.health.enabled and config.health.checksums, experts=experts)
    if args is not None:
        total, active = param_counts(args, mtp=True)
        flops = flops_per_token(args, config.train.seq_len)
    else:  # a dense estimate: 6 FLOPs per parameter and token (forward + backward)
        total = active = sum(p.numel() for p in inner.parameters())
        flops = 6.0 * total
    return Built(config, backend, info, args, model, inner, optimizer, runner, dtype, flops, total, active, experts)
