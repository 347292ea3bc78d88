"""Running on a SLURM cluster (and locally through the same path) with submitit.

- `plugin.py`: `hydra/launcher=slurm|local` (conf/hydra/launcher/): Hydra's submitit
  launchers, plus: a requeued job continues its run dir (`training.resume=auto`), and every
  wait is bounded by the job's real state in SLURM (`scontrol`), so a job killed from outside
  (scancel, a time limit with no requeue budget left) is reported instead of waited for forever;
- `scontrol.py`: a job's state without `sacct` (which needs SLURM's accounting database).
"""
