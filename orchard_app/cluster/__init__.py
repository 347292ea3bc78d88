"""Running on a SLURM cluster (and locally through the same path) with submitit: the launchers
(`plugin.py`) and a job's state without `sacct` (`scontrol.py`)."""
