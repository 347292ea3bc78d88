"""A SLURM job's state from `scontrol show job` (what `sacct` would say, without needing the
accounting database that many clusters, and the test cluster, do not run)."""

from __future__ import annotations

import re
import subprocess

# States after which a job will not run again by itself.
TERMINAL = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
            "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT", "SPECIAL_EXIT"}  # fmt: skip


def job_state(job_id: str) -> tuple[str, str]:
    """(state, reason) of a job or array task, e.g. ("TIMEOUT", "TimeLimit"); ("UNKNOWN", why)
    when scontrol cannot say (the job has aged out of slurmctld's memory, no scontrol)."""
    try:
        done = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True,
                              text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.SubprocessError) as e:
        return "UNKNOWN", f"scontrol failed: {e}"
    if done.returncode != 0:
        return "UNKNOWN", (done.stderr or done.stdout).strip()
    state = re.search(r"\bJobState=(\S+)", done.stdout)
    reason = re.search(r"\bReason=(\S+)", done.stdout)
    said = reason.group(1) if reason and reason.group(1) not in ("None", "(null)") else ""
    return (state.group(1) if state else "UNKNOWN"), said
