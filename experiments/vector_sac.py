#!/usr/bin/env python3
"""Train SAC on the dodgerl arena from the 65-dim state vector.

    python experiments/vector_sac.py --level 1
    python experiments/vector_sac.py --resume results/<experiment>/<run>
    python experiments/vector_sac.py --help
"""

import os
import sys

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dodgerl.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("vector"))
