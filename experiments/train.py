#!/usr/bin/env python3
"""Train SAC on any registered Gymnasium env with Box observations and actions, or on the dodge
arena (the arguments of ``dodgerl-train``; docs/envs.md).

    python experiments/train.py --env-id HalfCheetah-v5          # configs/sac_mujoco_halfcheetah.yaml
    python experiments/train.py --env-id Pendulum-v1 --set train.total_timesteps=20000
    python experiments/train.py --kind vector --level 2          # the dodge arena, as vector_sac.py
    python experiments/train.py --resume results/<experiment>/<run>
    python experiments/train.py --help
"""

import os
import sys

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dodgerl.cli import train_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(train_main())
