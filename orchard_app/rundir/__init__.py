"""The run directory, an audit record: its layout (every file name of a run dir and a sweep
dir), the lock that makes one writer, provenance.json, logging into it, and `RunDirectory`,
which holds all of them for the life of a run. Below every package that writes into a run dir
(engine checkpoints, evaluation, export), so each can take its file names from layout.py."""
