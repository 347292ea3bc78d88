"""One run: `train(cfg)`, the command-line job around it, the run context, the one assembly of
its parts, and the job's line in a sweep's jobs.jsonl (its directory is orchard_app.rundir)."""
