"""Processes of a run: which process this is (rank.py, read from the launcher's environment,
no torch), what the engine asks of the others (collective.py: one process answers alone), the
process group started for DistributedDataParallel (group.py) and the model wrapped for it
(model.py). Import the modules themselves: this package imports nothing, so `rank` stays light."""
