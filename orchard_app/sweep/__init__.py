"""Many runs under any sweeper or launcher, seen from the launcher process: the summary
callback, the progress lines and closing table, the Optuna direction that follows the monitor,
and launcher warnings routed to the console once."""
