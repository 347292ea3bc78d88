"""What a user sees of a tracked study, in a real browser: `mlflow server` and optuna-dashboard
on 127.0.0.1, driven by headless Chromium (Debian's `chromium`, through Playwright on that
binary). Each asserted page is saved as a PNG under the test's tmp dir (screens/), so a failure
can be looked at. The selectors follow MLflow 3.17's and optuna-dashboard 0.21's markup: a
new UI release may need them updated (constraints.txt pins both).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import make_npz, run_cli, tiny_overrides

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BIN = Path(sys.executable).parent
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed: apt-get install chromium (.ci/run does, as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(command: list[str], ready_url: str, cwd: Path, log: Path, timeout_s: float = 180):
    """A server process until the block ends; ready once `ready_url` answers 200."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)  # fmt: skip
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                assert proc.poll() is None, f"{command[0]} exited: {log.read_text()[-2000:]}"
                assert time.monotonic() < deadline, f"{ready_url} not up: {log.read_text()[-2000:]}"
                try:
                    with urllib.request.urlopen(ready_url, timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    time.sleep(0.5)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def close_assistant(page) -> None:
    """MLflow 3.17 opens an "MLflow Assistant" panel over a third of the page."""
    with contextlib.suppress(Exception):
        page.get_by_role("button", name="Close").click(timeout=3000)


def test_a_tracked_study_reads_as_one_page_in_mlflow_and_optuna_dashboard(tmp_path, browser):
    import optuna
    from mlflow import MlflowClient

    screens = tmp_path / "screens"
    screens.mkdir()
    npz = make_npz(tmp_path / "tiny.npz", counts=(192, 64, 64))
    sweep, port = tmp_path / "study", free_port()
    base = f"http://127.0.0.1:{port}"
    server = [str(BIN / "mlflow"), "server", "--backend-store-uri",
              f"sqlite:///{tmp_path / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port),
              "--workers", "1"]  # fmt: skip
    with serve(server, f"{base}/health", tmp_path, tmp_path / "mlflow_server.log"):
        # 3 trials of a 2 x 2 grid (so both learning rates run, whatever the order); the hopeless
        # one is stopped by the threshold pruner after its second epoch, the other completes
        result = run_cli(
            "-m", "hydra/sweeper=orchard_optuna", "hydra/sweeper/sampler=grid",
            *tiny_overrides(npz, "training.epochs=3", "evaluation.figures=true"),
            "optimizer.lr=choice(0.003,0.0000001)", "model.dropout=choice(0.0,0.1)",
            "hydra.sweeper.n_trials=3",
            "hydra.sweeper.pruner={_target_:optuna.pruners.ThresholdPruner,lower:0.5,n_warmup_steps:2}",
            "tracking=mlflow", f"tracking.uri={base}", f"hydra.sweep.dir={sweep}", cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        link = re.search(r"MLflow: (http://\S+)", result.stderr)
        assert link, result.stderr[-2000:]

        storage = f"sqlite:///{sweep / 'optuna.db'}"
        (study_name,) = optuna.get_all_study_names(storage)
        study = optuna.load_study(study_name=study_name, storage=storage)
        states = {t.number: t.state.name for t in study.trials}
        assert "PRUNED" in states.values() and "COMPLETE" in states.values(), states
        mlflow = MlflowClient(tracking_uri=base)
        runs = mlflow.search_runs([mlflow.get_experiment_by_name("orchard_app").experiment_id])
        (parent,) = [r for r in runs if r.data.tags.get("orchard.role") == "sweep"]
        experiment, parent_id = parent.info.experiment_id, parent.info.run_id
        name = parent.data.tags["mlflow.runName"]
        assert name.startswith(f"study {study_name}")

        page = browser.new_page(viewport={"width": 1920, "height": 1200})
        # 1. the printed link lands on the runs table, the study's parent run in it
        page.goto(link[1])
        page.get_by_role("grid").get_by_text(name).wait_for(timeout=WAIT_MS)
        close_assistant(page)
        page.screenshot(path=screens / "1_runs.png")
        assert f"#/experiments/{experiment}/runs" in page.url

        # 2. expanded, its trials: the pruned one says so at the start of its name
        name_cell = page.locator("[role=gridcell][col-id='attributes.`Run Name`']", has_text=name)
        name_cell.locator("button").first.click()
        pruned = page.get_by_role("grid").get_by_text(re.compile(r"^pruned at epoch \d+ · "))
        pruned.first.wait_for(timeout=WAIT_MS)
        page.screenshot(path=screens / "2_runs_expanded.png")
        assert pruned.count() == sum(s == "PRUNED" for s in states.values())

        # 3. the parent run's page: the study's params, its best value so far, its files
        page.goto(
            f"{base}/#/experiments/{experiment}/runs/{parent_id}?workflowType=machine_learning"
        )
        page.get_by_text("space.optimizer.lr").wait_for(timeout=WAIT_MS)
        close_assistant(page)
        page.screenshot(path=screens / "3_parent.png", full_page=True)
        for text in ("space.model.dropout", "choice(0.003,0.0000001)", "sampler", "pruner",
                     "direction", "maximize", "n_trials", "study/best_val_accuracy",
                     "study/trials_pruned"):  # fmt: skip
            assert page.get_by_text(text, exact=True).count() >= 1, text
        pruner = re.compile(r"^ThresholdPruner\(.*lower=0\.5")
        assert page.get_by_text(pruner).count() == 1
        best_row = page.get_by_role("row").filter(has_text="study/best_val_accuracy")
        assert f"{study.best_value:.10g}" in best_row.first.inner_text()  # as JS prints it
        page.get_by_role("tab", name="Artifacts").click()
        page.get_by_text("top_trials.md").wait_for(timeout=WAIT_MS)
        for file in ("study.csv", "best_config.yaml", "figures"):
            assert page.get_by_text(file, exact=True).count() == 1, file
        page.get_by_text("top_trials.md").click()
        page.get_by_text(re.compile(r"top \d+ trials")).first.wait_for(timeout=WAIT_MS)
        page.screenshot(path=screens / "4_parent_artifacts.png")

        # 4. a completed trial's metrics open on its learning curves: the loss, over 3 epochs
        best = study.best_trial.number
        (child,) = [r for r in runs if r.data.tags.get("job_num") == str(best)]
        page.goto(f"{base}/#/experiments/{experiment}/runs/{child.info.run_id}/model-metrics"
                  "?workflowType=machine_learning")  # fmt: skip
        page.get_by_text("train_loss", exact=True).wait_for(timeout=WAIT_MS)
        close_assistant(page)
        page.wait_for_timeout(1500)  # the charts draw after the page
        page.screenshot(path=screens / "5_child_metrics.png")
        lines = page.inner_text("body").splitlines()  # a group's name, then its "(charts)"
        groups = [g for g, n in zip(lines, lines[1:], strict=False) if re.fullmatch(r"\(\d+\)", n)]
        assert groups[0] == "epoch" and "test" in groups, groups
        line = page.locator(  # the plotted line of the chart titled train_loss
            "xpath=//*[normalize-space(text())='train_loss']/ancestor::div"
            "[.//*[contains(@class,'scatterlayer')]][1]//*[contains(@class,'scatterlayer')]"
            "//*[contains(@class,'js-line')]"
        ).first.get_attribute("d")
        assert line.count("L") == 2, line  # three epochs: three points joined

        # 5. its report.html shows the figures (report.md cannot, in MLflow's viewer)
        page.goto(f"{base}/#/experiments/{experiment}/runs/{child.info.run_id}/artifacts"
                  "?workflowType=machine_learning")  # fmt: skip
        page.get_by_text("report.html", exact=True).click()
        report = page.frame_locator("iframe").first
        report.get_by_role("heading", name="Figures").wait_for(timeout=WAIT_MS)
        page.wait_for_timeout(1000)
        page.screenshot(path=screens / "6_child_report.png")
        widths = report.locator("img").evaluate_all("imgs => imgs.map(i => i.naturalWidth)")
        assert widths and min(widths) > 0, widths

    # 6. optuna-dashboard on the study's storage: the study's name, the objective's name
    port = free_port()
    dashboard = [str(BIN / "optuna-dashboard"), storage, "--host", "127.0.0.1", "--port", str(port)]
    with serve(dashboard, f"http://127.0.0.1:{port}/dashboard", tmp_path, tmp_path / "dash.log"):
        page.goto(f"http://127.0.0.1:{port}/dashboard")
        listed = page.get_by_text(re.compile(rf"^\d+\. {re.escape(study_name)}$"))  # "1. <name>"
        listed.first.wait_for(timeout=WAIT_MS)
        page.screenshot(path=screens / "7_dashboard_studies.png")
        listed.first.click()
        page.get_by_text(f"{study_name} (id=").first.wait_for(timeout=WAIT_MS)
        page.get_by_text(re.compile(r"^Best Trial")).first.wait_for(timeout=WAIT_MS)
        page.wait_for_timeout(2000)  # the plots draw after the page
        page.screenshot(path=screens / "8_dashboard_study.png", full_page=True)
        text = page.inner_text("body")
        assert "val_accuracy" in text and "Objective 0" not in text, (
            "the objective is named after training.monitor (study.set_metric_names)"
        )
        assert "npz" in study_name and "mini_cnn" in study_name, (
            f"the study's name says what it is (dataset, model, preset), not {study_name!r}"
        )
