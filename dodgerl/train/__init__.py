"""Training: ``train(config)`` runs (or resumes) a SAC run, ``train_seeds(config, seeds)`` several
seeds of it in one process; ``dodgerl.train.loop`` is the loop.

Parts, each with one job: ``plan`` (how the run executes on this machine), ``collector`` (envs
into the replay), ``dispatcher`` (device calls and updates), ``group`` (seeds stacked on one
device or sharded over several), ``evaluation`` (in whichever placement), ``checkpointing``
(saves, resume, abandon), ``logs`` (CSVs, progress bar).
"""

from dodgerl.train.group import GroupResult, parse_seeds, train_seeds
from dodgerl.train.loop import TrainResult, train
from dodgerl.train.plan import ExecutionPlan, choose_plan

__all__ = ["ExecutionPlan", "GroupResult", "TrainResult", "choose_plan", "parse_seeds", "train",
           "train_seeds"]
