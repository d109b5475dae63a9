#!/usr/bin/env python3
"""Evaluate a saved SAC agent: the best policy a run kept, or any of its checkpoints.

    python experiments/evaluate.py results/<experiment>/<run>                   # its best/ policy
    python experiments/evaluate.py results/<experiment>/<run> --episodes 100 --gif best.gif
    python experiments/evaluate.py results/<experiment>/<run>/checkpoints/50000 --stochastic
    python experiments/evaluate.py --help
"""

import os
import sys

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dodgerl.evaluate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
