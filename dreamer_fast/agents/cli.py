"""``dreamer-fast train | eval | plot``."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from dreamer_fast.agents.config import (ALGOS, RESUMABLE, SIZES, ConfigError, flatten, load_config,
                                        parse_override)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a Dreamer agent (resumes an existing --logdir)",
                       description="Train DreamerV1/V2/V3. Defaults come from "
                                   "dreamer_fast/configs/defaults.yaml; on an existing "
                                   "--logdir the run resumes from its checkpoint.")
    p.add_argument("--env", help="gym:<id> or dmc:<domain>-<task> (default gym:Pendulum-v1)")
    p.add_argument("--algo", choices=ALGOS, help="default v3")
    p.add_argument("--size", choices=SIZES, help="model size preset (default debug, the CPU "
                                                 "size)")
    p.add_argument("--steps", type=int, help="env steps to train for, counting action repeat")
    p.add_argument("--logdir", type=Path, help="run directory (default runs/<env>-<algo>-"
                                               "<size>-seed<seed>)")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"])
    p.add_argument("--backend", choices=["fused", "ref", "auto"],
                   help="fused kernels or the pure-PyTorch references")
    p.add_argument("--envs", type=int, help="parallel environments (subprocesses)")
    p.add_argument("--seed", type=int)
    p.add_argument("--pixels", action="store_true", help="64x64 image observations")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set model.deter=256 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run_train)

    p = sub.add_parser("eval", help="evaluate a trained run's policy")
    p.add_argument("--logdir", type=Path, required=True)
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--video", nargs="?", const="gif", choices=["gif", "mp4"],
                   help="write <logdir>/eval.gif (or .mp4) of the first episode")
    p.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"])
    p.set_defaults(run=run_eval)

    p = sub.add_parser("plot", help="plot a run's learning curve (return vs env steps)")
    p.add_argument("--logdir", type=Path, required=True)
    p.add_argument("--out", type=Path, help="PNG path (default <logdir>/curve.png)")
    p.add_argument("--window", type=int, default=10, help="running-mean window in episodes")
    p.set_defaults(run=run_plot)


def _overrides(args: argparse.Namespace) -> dict:
    flat = {}
    for key in ("env", "algo", "size", "steps", "device", "backend", "envs", "seed"):
        value = getattr(args, key)
        if value is not None:
            flat[key] = value
    if args.pixels:
        flat["env_opts.obs"] = "pixels"
    if args.no_progress:
        flat["run.progress"] = False
    for text in args.overrides:
        key, value = parse_override(text)
        flat[key] = value
    return flat


def _default_logdir(cfg) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", cfg.env)
    return Path("runs") / f"{name}-{cfg.algo}-{cfg.size}-seed{cfg.seed}"


def resolve_train_config(args: argparse.Namespace):
    """The config to train with and the logdir: a new run's merged config, or a saved
    run's config with only the RESUMABLE keys changed."""
    from dreamer_fast.agents.trainer import saved_config

    flat = _overrides(args)
    cfg = load_config(overrides=flat)
    logdir = args.logdir or _default_logdir(cfg)
    saved = saved_config(logdir)
    if saved is None:
        return cfg, logdir
    given = {k: v for k, v in flat.items() if k not in RESUMABLE}
    for key, value in given.items():
        old = saved.get_path(key)
        if old != cfg.get_path(key):
            raise ConfigError(f"{logdir} holds a run with {key}={old!r}; it cannot resume "
                              f"with {key}={value!r} (use a new --logdir)")
    keep = {k: cfg.get_path(k) for k in flat if k in RESUMABLE}
    return load_config(overrides={**flatten(saved.to_dict()), **keep}), logdir


def run_train(args: argparse.Namespace) -> int:
    from dreamer_fast.agents.checkpoint import CheckpointError
    from dreamer_fast.agents.distributed import DistError, from_env
    from dreamer_fast.agents.replay import ReplayError
    from dreamer_fast.agents.trainer import Trainer
    from dreamer_fast.envs import EnvError

    rank, world = 0, 1
    try:
        rank, world, _ = from_env()  # torchrun's environment: data-parallel when world > 1
        cfg, logdir = resolve_train_config(args)
        trainer = Trainer(cfg, logdir)
    except (ConfigError, EnvError, CheckpointError, ReplayError, DistError) as e:
        where = f" (rank {rank} of {world})" if world > 1 else ""
        print(f"dreamer-fast train{where}: {e}", file=sys.stderr)
        return 2
    d = trainer.dist
    if not d.is_main:
        return trainer.run()
    r = cfg.run
    print(f"[train] {cfg.algo} size {cfg.size} on {cfg.env}, {cfg.steps} env steps, device "
          f"{trainer.device}, backend {cfg.backend}, logdir {logdir}", flush=True)
    print(f"[train] world size {d.world}" + (
        f" ({d.backend}): batch {r.batch_size} per rank x {d.world} ranks = global batch "
        f"{r.batch_size * d.world} of length {r.batch_length}; {cfg.envs} env(s) per rank, "
        f"{cfg.envs * d.world} in all; replay shards in {logdir / 'replay'}/rank<r>"
        if d.enabled else f": batch {r.batch_size} of length {r.batch_length}"), flush=True)
    code = trainer.run()
    if code == 0:
        from dreamer_fast.agents.plot import plot, summary
        s = summary(logdir)
        if s.get("episodes"):
            plot(logdir)
            print(f"[train] done: {s['episodes']} episodes, mean return of the last 10: "
                  f"{s['mean_last10']:.1f}; curve in {logdir / 'curve.png'}")
    return code


def run_eval(args: argparse.Namespace) -> int:
    from dreamer_fast.agents.evaluate import evaluate

    try:
        result = evaluate(args.logdir, args.episodes, args.video, args.device)
    except (FileNotFoundError, ValueError, ConfigError) as e:
        print(f"dreamer-fast eval: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


def run_plot(args: argparse.Namespace) -> int:
    from dreamer_fast.agents.plot import plot, summary

    try:
        out = plot(args.logdir, args.out, args.window)
    except (FileNotFoundError, ValueError) as e:
        print(f"dreamer-fast plot: {e}", file=sys.stderr)
        return 2
    s = summary(args.logdir, args.window)
    print(f"wrote {out}: {s['episodes']} episodes to env step {s['last_step']}, mean of the "
          f"last {args.window}: {s[f'mean_last{args.window}']:.1f}")
    return 0
