"""ReplayBuffer survives what the old pickled buffer did not: kill -9 mid-write, a reopen with
different settings, and a full disk."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dodgerl.replay import ReplayBuffer, ReplayMismatchError, required_bytes
from tests.test_replay_helpers import ScriptedWriter, decode_frame, split_stack

REPO = Path(__file__).resolve().parents[1]
SETTINGS = dict(capacity=120, observation_shape=(6, 6, 3), observation_dtype=np.uint8,
                action_dim=3, n_envs=2, frame_stack=2, seed=0)


CHILD_SETTINGS = repr({**SETTINGS, "observation_dtype": "uint8"})


def child_command(code: str, *args: object) -> dict:
    """Popen/run arguments for a child Python process that sees this checkout."""
    return dict(args=[sys.executable, "-c", code.replace("{settings}", CHILD_SETTINGS),
                      *map(str, args)],
                cwd=REPO, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def audit(buf: ReplayBuffer) -> int:
    """Check every sampleable transition against the frame ids encoded in it; return the count.

    Actions are [frame, env, episode start frame] (ScriptedWriter), so the stacks can be checked
    without the writer's model.
    """
    env, frames = buf.transitions()
    if frames.size == 0:
        return 0
    batch = buf.get(env, frames)
    S, w, C = buf.slots_per_env, buf.frames_written, buf.observation_shape[-1]
    for i in range(frames.size):
        e, a = int(env[i]), int(frames[i])
        oldest = max(int(buf._oldest[e]), int(w[e]) - S)
        assert oldest <= a and a + 1 < w[e]
        obs = split_stack(batch["observations"][i], 2, C)
        nxt = split_stack(batch["next_observations"][i], 2, C)
        start = int(batch["actions"][i][2])
        assert [decode_frame(f) for f in obs] == [(max(a - 1, start, oldest), e), (a, e)]
        assert [decode_frame(f) for f in nxt] == [(a, e), (a + 1, e)]
        np.testing.assert_array_equal(batch["actions"][i][:2], [a, e])
        assert batch["rewards"][i] == np.float32(a / 4)
    return int(frames.size)


CHILD_WRITER = """
import random, sys
import numpy as np
from dodgerl.replay import ReplayBuffer
from tests.test_replay_helpers import ScriptedWriter
buf = ReplayBuffer(sys.argv[1], **{settings})
writer = ScriptedWriter.resume(buf)
rnd = random.Random(int(sys.argv[2]))
print("ready", buf.transitions_added, flush=True)
while True:
    for _ in range(rnd.randint(1, 6)):
        writer.step()
    buf.commit()
    print("committed", buf.transitions_added, flush=True)
"""


def test_kill_9_at_random_moments_always_reopens_consistent(tmp_path):
    directory = tmp_path / "buf"
    ReplayBuffer(directory, **SETTINGS).close()
    rnd = random.Random(1234)
    last_committed = 0
    wrapped = False
    for trial in range(24):
        child = subprocess.Popen(**child_command(CHILD_WRITER, directory, trial))
        ready = child.stdout.readline()
        assert ready.startswith("ready"), child.stderr.read()
        assert int(ready.split()[1]) >= last_committed
        time.sleep(rnd.uniform(0.0, 0.25))
        os.kill(child.pid, signal.SIGKILL)
        out, _ = child.communicate()
        assert child.returncode == -signal.SIGKILL
        counts = [int(line.split()[1]) for line in out.splitlines()
                  if line.startswith("committed ") and len(line.split()) == 2]
        if counts:
            last_committed = counts[-1]
        buf = ReplayBuffer(directory, **SETTINGS)
        assert buf.transitions_added >= last_committed
        n = audit(buf)
        assert n == len(buf) and (n > 0 or last_committed == 0)
        wrapped |= bool(min(buf.frames_written) > buf.slots_per_env)
        last_committed = buf.transitions_added
        del buf  # no commit here: the next child starts from exactly what the crash left
    assert wrapped, "the trials should have lapped the ring at least once"
    assert last_committed > 0


def _snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


@pytest.mark.parametrize("field,value", [
    ("observation_shape", (6, 6, 4)),
    ("observation_dtype", np.float32),
    ("capacity", 240),
    ("action_dim", 2),
    ("n_envs", 3),
])
def test_mismatched_reopen_names_the_field_and_changes_nothing(tmp_path, field, value):
    directory = tmp_path / "buf"
    buf = ReplayBuffer(directory, **SETTINGS)
    writer = ScriptedWriter(buf)
    for _ in range(30):
        writer.step()
    buf.close()
    before = _snapshot(directory)
    with pytest.raises(ReplayMismatchError, match=field) as info:
        ReplayBuffer(directory, **{**SETTINGS, field: value})
    assert isinstance(info.value, ValueError)
    on_disk = {"observation_shape": "[6, 6, 3]", "observation_dtype": "|u1", "capacity": "120",
               "action_dim": "3", "n_envs": "2"}[field]
    assert on_disk in str(info.value)
    assert _snapshot(directory) == before
    assert len(ReplayBuffer(directory, **SETTINGS)) == len(writer.expected_transitions())


def test_buffer_larger_than_free_disk_fails_before_writing(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    frame = 256 * 256 * 3
    capacity = int(free // frame * 2)
    assert required_bytes(capacity, (256, 256, 3)) > free
    directory = tmp_path / "huge" / "replay"
    with pytest.raises(OSError, match="needs") as info:
        ReplayBuffer(directory, capacity=capacity, observation_shape=(256, 256, 3))
    message = str(info.value)
    assert "free" in message and "GiB" in message and f"capacity {capacity}" in message
    assert not (tmp_path / "huge").exists()


CHILD_FSIZE_CREATE = """
import resource, signal, sys
import numpy as np
from dodgerl.replay import ReplayBuffer
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
try:
    ReplayBuffer(sys.argv[1], capacity=200, observation_shape=(64, 64, 3))
except OSError as exc:
    print("OSError", exc)
    sys.exit(3)
"""


def test_disk_full_while_creating_gives_a_clear_error_and_no_partial_buffer(tmp_path):
    directory = tmp_path / "replay"  # 200 x 12 KiB frames: 2.4 MiB, over the 1 MiB file limit
    child = subprocess.run(**child_command(CHILD_FSIZE_CREATE, directory))
    assert child.returncode == 3, child.stderr
    assert child.stdout.startswith("OSError") and "File too large" in child.stdout
    assert not directory.exists()


CHILD_FSIZE_COMMIT = """
import resource, signal, sys
import numpy as np
from dodgerl.replay import ReplayBuffer
from tests.test_replay_helpers import ScriptedWriter
buf = ReplayBuffer(sys.argv[1], **{settings})
writer = ScriptedWriter.resume(buf)
for _ in range(20):
    writer.step()  # overwrites the oldest committed frames without committing
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))  # the header no longer fits
try:
    buf.commit()
except OSError as exc:
    print("OSError", exc)
    sys.exit(3)
"""


def test_failed_commit_leaves_the_last_committed_state_readable(tmp_path):
    directory = tmp_path / "buf"
    buf = ReplayBuffer(directory, **SETTINGS)
    writer = ScriptedWriter(buf)
    for _ in range(40):
        writer.step()
    buf.close()
    committed, before = buf.transitions_added, len(writer.expected_transitions())
    child = subprocess.run(**child_command(CHILD_FSIZE_COMMIT, directory))
    assert child.returncode == 3 and "File too large" in child.stdout, child.stderr
    buf = ReplayBuffer(directory, **SETTINGS)
    assert buf.transitions_added == committed
    assert 0 < audit(buf) == len(buf) < before  # the overwritten oldest frames are dropped
    assert not (directory / "header.json.tmp").exists()
