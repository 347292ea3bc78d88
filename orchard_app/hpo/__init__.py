"""Hyper-parameter optimisation: an Optuna study driven by Hydra's sweeper, with pruning.

- `sweeper.py`: the sweeper (registered as `hydra/sweeper=orchard_optuna` in hydra_plugins/):
  asks Optuna for trials, launches them as Hydra jobs, tells their outcome, resumes studies,
  stops early and writes the study's artifacts;
- `trial.py`: the job side: reloads its trial from the shared storage, reports the monitored
  value every epoch and raises TrialPruned when the pruner says so;
- `slots.py`: asynchronous slots, n_jobs trials in flight (through the launcher's submit/poll);
- `space.py`: the search space parsed and checked, and spelled back in messages;
- `storage.py`: storage URLs (SQLite, journal file, PostgreSQL), heartbeats and lost-trial retry;
- `report.py`: study.csv, top_trials.md, best_config.yaml and figures.
"""
