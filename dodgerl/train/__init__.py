"""Training: ``train(config)`` runs (or resumes) a SAC run; ``dodgerl.train.loop`` is the loop.

Parts, each with one job: ``plan`` (how the run executes on this machine), ``collector`` (envs
into the replay), ``dispatcher`` (device calls and updates), ``evaluation`` (in whichever
placement), ``checkpointing`` (saves, resume, abandon), ``logs`` (CSVs, progress bar).
"""

from dodgerl.train.loop import TrainResult, train
from dodgerl.train.plan import ExecutionPlan, choose_plan

__all__ = ["ExecutionPlan", "TrainResult", "choose_plan", "train"]
