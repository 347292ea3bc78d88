"""Where to see a run or an experiment in MLflow's UI (no mlflow import: the sweep console uses it)."""

from __future__ import annotations

# MLflow 3.x's UI opens in its GenAI mode (trace overview) unless the page asks for this one;
# in the UI it is the "Model training" switch at the top left, which the browser remembers.
UI_MODE = "workflowType=machine_learning"


def ui_hint(tracking_uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """Where to see an experiment's runs (or one run) in MLflow's UI, in its model-training view."""
    page = f"#/experiments/{experiment_id}/runs{f'/{run_id}' if run_id else ''}?{UI_MODE}"
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/{page}"
    return f"mlflow ui --backend-store-uri {tracking_uri}, then open http://127.0.0.1:5000/{page}"
