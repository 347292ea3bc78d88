"""One run: `train(cfg)`, the command-line job around it, the run context, the one assembly of
its parts, its run directory (layout, claim, lock, provenance, logging) and the job's record in
a sweep's jobs.jsonl."""
