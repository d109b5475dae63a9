"""Command line of the experiment scripts (``experiments/topdown_sac.py``, ``vector_sac.py``) and
of the ``dodgerl-train`` console script.

Every error a user can cause or meet (a bad config, a damaged checkpoint or replay, a full disk)
ends as one ``error: ...`` line naming the file or key, with exit code 2; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

from dodgerl.config import (DODGE_ID, ConfigError, RunConfig, apply_overrides, config_from_dict,
                            read_yaml)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def build_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Config keys are documented in the YAML files under configs/. "
        "Example: --set train.total_timesteps=20000 --set agent.actor_lr=1e-4",
    )
    parser.add_argument("--level", type=int, choices=(1, 2, 3), default=None,
                        help="arena difficulty: 1 one fixed direction, 2 all around, 3 harder; "
                        "picks the default config and sets env.level (the dodge env only; 1 "
                        "when not given)")
    parser.add_argument("--env-id", default=None, metavar="ID",
                        help="train on this registered Gymnasium env (e.g. HalfCheetah-v5); the "
                        "default config is the file in configs/ whose env.id is ID, else "
                        f"{GENERIC_CONFIG.name} (docs/envs.md)")
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML config (default: the matching file in configs/ for --level)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (overrides the config's)")
    parser.add_argument("--seeds", default=None, metavar="SEEDS",
                        help="train several seeds at once in this process, e.g. 0-4 or 0,3,7: "
                        "each a complete run under one group directory (see docs/runs.md)")
    parser.add_argument("--total-timesteps", type=int, default=None,
                        help="env steps to train for (overrides train.total_timesteps; "
                        "with --resume, extends the run)")
    parser.add_argument("--results-dir", type=Path, default=Path("results"),
                        help="runs go to RESULTS_DIR/<experiment>/<YYYYmmdd_HHMMSS>/")
    parser.add_argument("--resume", type=Path, default=None,
                        help="RUN_DIR (newest complete checkpoint) or RUN_DIR/checkpoints/<step>; "
                        "the run's own config.yaml is used; from an earlier checkpoint, what was "
                        "saved after it moves to RUN_DIR/abandoned/ and the replay is rewound to it; "
                        "a group directory (--seeds) resumes every seed")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. agent.batch_size=128 (repeatable)")
    parser.add_argument("--fresh-replay", action="store_true",
                        help="with --resume: set the run's replay buffer aside (to "
                        "RUN_DIR/abandoned/) and start an empty one, keeping the agent")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error instead of one line")
    return parser


GENERIC_CONFIG = CONFIG_DIR / "sac_gym.yaml"
"""The default config of an env id that no file in configs/ names."""


def config_for_env(env_id: str) -> Path:
    """The file in configs/ whose ``env.id`` is ``env_id`` (the first by name), else the
    generic one."""
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        if path != GENERIC_CONFIG and (read_yaml(path).get("env") or {}).get("id") == env_id:
            return path
    return GENERIC_CONFIG


def default_config(kind: str, level: int) -> Path:
    difficulty = "easy" if level == 1 else "hard"
    name = {"topdown": f"sac_topdown_cnn_{difficulty}.yaml", "vector": f"sac_vector_{difficulty}.yaml"}[kind]
    return CONFIG_DIR / name


def config_from_args(kind: str, args: argparse.Namespace) -> RunConfig:
    """The run config of a new run from the parsed command line: ``--config`` (or the default
    for ``--env-id``, else the level's default for ``kind``), with ``--env-id``, ``--level``,
    ``--seed`` and the ``--set`` overrides applied."""
    env_id = getattr(args, "env_id", None)
    if env_id is not None and env_id != DODGE_ID:
        if args.level is not None:
            raise ConfigError(f"--level: a setting of {DODGE_ID} only, not of {env_id}")
        raw = read_yaml(args.config or config_for_env(env_id))
        raw.setdefault("env", {})["id"] = env_id
    else:
        level = 1 if args.level is None else args.level
        raw = read_yaml(args.config or default_config(kind, level))
        raw.setdefault("env", {})["level"] = level
    if args.seed is not None:
        raw["seed"] = args.seed
    return config_from_dict(apply_overrides(raw, args.overrides))


USER_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.ENOENT)
"""OSErrors that are the user's machine's, not a bug: said in one line."""


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types that end a command with one ``error:`` line."""
    from dodgerl.checkpoint import CheckpointError
    from dodgerl.replay.buffer import ReplayError

    return (ConfigError, CheckpointError, ReplayError)


def one_line(err: BaseException) -> str | None:
    """The ``error: ...`` line of an error a user can cause or meet, else None (a bug)."""
    if isinstance(err, user_errors()):
        return f"error: {err}"
    if isinstance(err, OSError) and err.errno in USER_ERRNOS:
        where = f"{err.filename}: " if err.filename else ""
        return f"error: {where}{err.strerror or err}"
    return None


def main(kind: str, argv: list[str] | None = None) -> int:
    parser = build_parser(
        f"Train SAC from {'top-down images' if kind == 'topdown' else 'the 65-dim state vector'} "
        "on the dodgerl arena, or on any Gymnasium env with Box observations and actions "
        "(--env-id)."
    )
    args = parser.parse_args(argv)
    if args.total_timesteps is not None and args.total_timesteps < 1:
        parser.error("--total-timesteps must be >= 1")
    if args.resume is not None and (args.overrides or args.config or args.seed is not None
                                    or args.seeds is not None):
        parser.error("--resume continues a run with its own config.yaml; "
                     "--config, --seed, --seeds and --set cannot be combined with it")
    if args.seed is not None and args.seeds is not None:
        parser.error("--seed and --seeds exclude each other")
    if args.resume is not None and args.env_id is not None:
        parser.error("--resume continues a run with its own config.yaml; --env-id cannot be "
                     "combined with it")
    if args.fresh_replay and args.resume is None:
        parser.error("--fresh-replay applies to --resume")
    try:
        config = None if args.resume is not None else config_from_args(kind, args)
        from dodgerl.train import parse_seeds, train, train_seeds
        from dodgerl.train.group import is_group_dir

        if args.seeds is not None or (args.resume is not None and is_group_dir(args.resume)):
            seeds = parse_seeds(args.seeds) if args.seeds is not None else None
            train_seeds(config, seeds, results_dir=args.results_dir, resume=args.resume,
                        total_timesteps=args.total_timesteps, fresh_replay=args.fresh_replay)
        else:
            train(config, results_dir=args.results_dir, resume=args.resume,
                  total_timesteps=args.total_timesteps, fresh_replay=args.fresh_replay)
    except Exception as err:  # noqa: BLE001  (a bug is re-raised below)
        line = one_line(err)
        if line is None or args.debug:
            raise
        print(line, file=sys.stderr)
        return 2
    return 0


def train_main(argv: list[str] | None = None) -> int:
    """``dodgerl-train [--kind topdown|vector] ...``: the experiment scripts' command line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    kind = "topdown"
    if "--kind" in argv:
        i = argv.index("--kind")
        if i + 1 >= len(argv) or argv[i + 1] not in ("topdown", "vector"):
            print("error: --kind takes topdown or vector", file=sys.stderr)
            return 2
        kind = argv[i + 1]
        del argv[i:i + 2]
    return main(kind, argv)
