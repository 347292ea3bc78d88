"""How a run is put together and where it runs: the run context (process rank, device, run
directory, stop policy) and the one assembly of a run's parts from a config."""
