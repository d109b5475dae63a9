"""benchmarks/seeds_learning.py: seed groups run as processes, their curves summarised, and each
kept best policy re-evaluated on fresh episodes."""

from __future__ import annotations

import json

import numpy as np

from benchmarks import seeds_learning
from dodgerl.evaluate import evaluate, load_agent

TINY = ("--set agent.net_arch=[16,16] --set agent.batch_size=16 --set train.learning_starts=100 "
        "--set train.eval_freq=100 --set train.eval_episodes=2 --set train.progress_bar=false "
        "--set train.video=false --set train.tensorboard=false --set env.max_episode_steps=60")


def test_a_group_is_summarised_and_its_best_policies_reevaluated_on_fresh_episodes(tmp_path):
    out = tmp_path / "learning"
    command = f"experiments/vector_sac.py --level 1 --seeds 0-1 --total-timesteps 300 {TINY}"
    assert seeds_learning.main(["--out", str(out), "--run", f"tiny={command}", "--budgets", "200",
                                "--reeval-episodes", "3"]) == 0
    curves = json.loads((out / "curves.json").read_text())
    assert set(curves["curves"]["tiny"]) == {"0", "1"} and curves["exit"] == {"tiny": 0}
    assert [s for s, _ in curves["curves"]["tiny"]["0"]["eval"]] == [100, 200, 300]
    reeval = json.loads((out / "reeval.json").read_text())["tiny"]
    assert set(reeval) == {"0", "1"}
    for seed, row in reeval.items():
        run_dir = next(p.parent for p in (out / "runs" / "tiny").rglob("config.yaml")
                       if p.parent.name == f"seed{seed}")
        loaded = load_agent(run_dir, "best")
        assert row["step"] == loaded.meta["step"] and row["episodes"] == 3
        # the figure is the best policy on episodes 2,000,000.. (not the run's eval episodes)
        again = evaluate(loaded.agent, loaded.config.env, 3, seeds_learning.FRESH_SEED)
        assert row["mean_return"] == float(np.mean(again.returns))
    report = (out / "report.md").read_text()
    assert "re-evaluated on fresh deterministic episodes" in report and "| tiny | 2 | 3 |" in report
    assert not list(out.rglob("replay")) and list(out.rglob("best"))  # replay gone, best/ kept
    # a later summary keeps the re-evaluation without running it again
    assert seeds_learning.main(["--out", str(out), "--summarise-only", "--budgets", "200"]) == 0
    assert "| tiny | 2 | 3 |" in (out / "report.md").read_text()
