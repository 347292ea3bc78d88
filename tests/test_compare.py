"""Benchmark mode: the experiment presets, the paper's table and `python -m orchard_app.compare`
(computed from small fake run directories), and `hardware=auto`'s precision choice."""

from __future__ import annotations

import csv
import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, compose, run_cli, tiny_overrides

from orchard_app.compare import compare, paper, seedless_hash, to_csv, to_markdown, write
from orchard_app.compare.__main__ import main as compare_main
from orchard_app.config.medmnist import medmnist_2d_names, medmnist_info, task_of
from orchard_app.config.validate import validate
from orchard_app.errors import CompareError

EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


# ------------------------------------------------------------------ the presets


@pytest.mark.parametrize("dataset", medmnist_2d_names())
def test_medmnist_v2_composes_and_validates_for_every_dataset(dataset):
    cfg = compose("experiment=medmnist_v2", f"dataset={dataset}")
    validate(cfg)
    assert cfg.dataset.name == dataset and cfg.dataset.task == task_of(dataset)
    assert (cfg.model.name, cfg.optimizer.name, cfg.scheduler.name) == (
        "resnet18_adapted", "adam", "multistep",
    )  # fmt: skip
    assert cfg.optimizer.lr == 1e-3 and cfg.optimizer.weight_decay == 0.0
    assert list(cfg.scheduler.milestones) == [0.5, 0.75] and cfg.scheduler.gamma == 0.1
    t = cfg.training
    assert (t.epochs, t.batch_size, t.monitor) == (100, 128, "val_auc")
    assert t.label_smoothing == 0.0 and t.mixup_alpha == 0.0 and not t.class_weighted_loss
    ds = cfg.dataset
    assert (ds.resolution, ds.mean, ds.std) == (28, 0.5, 0.5)
    augment = {k: v for k, v in ds.augment.items() if k != "crop_scale_min"}
    assert not any(augment.values()), augment  # no augmentation
    assert cfg.model.dropout == 0.0 and not cfg.model.pretrained and not cfg.evaluation.tta


def test_chestmnist_under_the_protocol_is_multi_label():
    """BCE with one sigmoid per label follows from the task (engine/loop.py `_loss`)."""
    assert compose("experiment=medmnist_v2", "dataset=chestmnist").dataset.task == "multi-label"


def test_command_line_overrides_beat_the_preset_and_no_preset_is_the_default():
    cfg = compose("experiment=medmnist_v2", "dataset=breastmnist", "training.epochs=3")
    assert cfg.training.epochs == 3 and cfg.training.batch_size == 128
    assert compose().model.name == "mini_cnn" and compose().training.epochs == 20


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_preset_composes_validates_and_is_global(name):
    text = (ROOT / "conf" / "experiment" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_"), name
    dataset = "breastmnist" if name == "medmnist_v2" else None
    cfg = compose(f"experiment={name}", *([f"dataset={dataset}"] if dataset else []))
    validate(cfg)


# ------------------------------------------------------------------ the paper's table


def test_paper_table_lists_exactly_the_2d_datasets_of_medmnist_info():
    table = paper()
    assert set(table["datasets"]) == set(medmnist_2d_names())
    assert len(table["datasets"]) == 12 and set(table["datasets"]) <= set(medmnist_info())
    assert "Scientific Data" in table["source"] and "2023" in table["source"]
    assert "medmnist.com" in table["site"]
    for name, row in table["datasets"].items():
        r18 = row["resnet18_28"]
        assert 0 < r18["acc"] <= row["best_acc"] < 1 and 0.5 < r18["auc"] < 1, name


# ------------------------------------------------------------------ fake run dirs


def fake_run(
    where: Path, dataset: str, seed: int, acc: float, auc: float, experiment: str | None = None,
    extra: dict | None = None, overrides: tuple[str, ...] = (), finished: str = "2026-01-01T00:00:00",
    hydra: bool = True,
) -> Path:  # fmt: skip
    """A run dir as train() leaves it, reduced to what compare reads."""
    run = where / f"{dataset}_{experiment or 'default'}_{seed}_{finished[-2:]}"
    (run / ".hydra").mkdir(parents=True)
    test = {"accuracy": acc, "auc": auc, "macro_f1": 0.5}
    (run / "metrics.json").write_text(json.dumps({"test": test, "dataset": {"name": dataset}}))
    (run / "provenance.json").write_text(json.dumps({
        "status": "completed", "finished": finished, "duration_seconds": 60.0 + seed,
        "config_hash": f"{dataset}{seed}{experiment}",
    }))  # fmt: skip
    if not hydra:
        (run / ".hydra").rmdir()
        return run
    config = {"dataset": {"name": dataset, "root": f"/data/{seed}"}, "model": {"name": "m"},
              "training": {"seed": seed, "epochs": 100}, **(extra or {})}  # fmt: skip
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    choices = {"hydra": {"runtime": {"choices": {"experiment": experiment, "model": "m"}}}}
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(choices))
    task = [*overrides, f"training.seed={seed}", f"dataset={dataset}", f"dataset.root=/data/{seed}"]
    if experiment:
        task.append(f"experiment={experiment}")
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(task))
    return run


def by_key(comparison) -> dict[tuple[str, str], dict]:
    return {(r["dataset"], r["experiment"]): r for r in comparison.rows()}


def test_means_sample_std_differences_and_seed_count(tmp_path):
    for seed, acc, auc in [(0, 0.80, 0.90), (1, 0.85, 0.92), (2, 0.90, 0.94)]:
        fake_run(tmp_path, "breastmnist", seed, acc, auc, experiment="medmnist_v2")
    row = by_key(compare([tmp_path]))[("breastmnist", "medmnist_v2")]
    assert row["seeds"] == 3 and row["seed_list"] == "0,1,2"
    assert row["acc_mean"] == pytest.approx(0.85)
    assert row["acc_std"] == pytest.approx(0.05)  # sample std, ddof=1 (population: 0.0408)
    assert row["auc_mean"] == pytest.approx(0.92) and row["auc_std"] == pytest.approx(0.02)
    paper_values = (row["paper_r18_acc"], row["paper_r18_auc"], row["paper_best_acc"])
    assert paper_values == (0.863, 0.901, 0.863)
    assert row["diff_acc_r18"] == pytest.approx(0.85 - 0.863)
    assert row["diff_auc_r18"] == pytest.approx(0.92 - 0.901)
    assert row["diff_acc_best"] == pytest.approx(0.85 - 0.863)
    assert row["seconds_per_run"] == pytest.approx(61.0)
    md = to_markdown(compare([tmp_path]))
    assert "0.850 ± 0.050" in md and "0.920 ± 0.020" in md and "-0.013" in md and "+0.019" in md
    assert "ddof=1" in md and "Scientific Data" in md and "3 (0,1,2)" in md


def test_missing_seeds_are_counted_and_failed_jobs_noted(tmp_path):
    sweep = tmp_path / "sweep"
    runs = [fake_run(sweep, "retinamnist", s, 0.5 + s / 100, 0.7, "medmnist_v2") for s in (0, 2)]
    jobs = [{"job": 0, "outcome": "completed", "run_dir": str(runs[0])},
            {"job": 1, "outcome": "failed", "run_dir": None, "error": "training diverged: NaN",
             "overrides": ["experiment=medmnist_v2", "training.seed=1"]},
            {"job": 2, "outcome": "completed", "run_dir": str(runs[1])}]  # fmt: skip
    (sweep / "jobs.jsonl").write_text("".join(json.dumps(j) + "\n" for j in jobs))
    comparison = compare([sweep])
    row = by_key(comparison)[("retinamnist", "medmnist_v2")]
    assert row["seeds"] == 2 and row["seed_list"] == "0,2"
    assert row["acc_mean"] == pytest.approx(0.51) and row["acc_std"] == pytest.approx(0.0141421356)
    assert any("job #1" in n and "failed" in n and "training.seed=1" in n for n in comparison.notes)
    assert "job #1" in to_markdown(comparison)


def test_runs_without_results_are_noted_with_their_status(tmp_path):
    fake_run(tmp_path, "breastmnist", 0, 0.8, 0.9)
    for name, status in (("1_failed", "failed"), ("2_running", "running")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "provenance.json").write_text(json.dumps({"status": status}))
    notes = compare([tmp_path]).notes
    assert "1_failed: failed, no results" in notes and "2_running: running, no results" in notes


def test_a_dataset_the_paper_does_not_list_has_empty_paper_columns(tmp_path):
    fake_run(tmp_path, "digits", 0, 0.97, 0.99)
    fake_run(tmp_path, "digits", 1, 0.95, 0.99)
    comparison = compare([tmp_path])
    row = by_key(comparison)[("digits", "default")]
    assert row["acc_mean"] == pytest.approx(0.96) and row["seeds"] == 2
    assert row["paper_r18_acc"] is None and row["diff_acc_best"] is None
    assert any("digits: not in the MedMNIST v2 paper" in n for n in comparison.notes)
    parsed = list(csv.DictReader(io.StringIO(to_csv(comparison))))
    assert parsed[0]["dataset"] == "digits" and parsed[0]["paper_r18_acc"] == ""


def test_experiments_and_their_settings_form_separate_groups(tmp_path):
    for s in (0, 1):
        fake_run(tmp_path, "breastmnist", s, 0.86, 0.9, "medmnist_v2")
        fake_run(tmp_path / "amp", "breastmnist", s, 0.87, 0.9, "medmnist_v2",
                 extra={"hardware": {"amp": True}}, overrides=("hardware.amp=true",))  # fmt: skip
        fake_run(tmp_path, "breastmnist", s, 0.88, 0.9, "breast_recipe", extra={"x": 1})
        fake_run(tmp_path, "bloodmnist", s, 0.95, 0.99, "medmnist_v2")
    rows = by_key(compare([tmp_path]))
    assert set(rows) == {("breastmnist", "medmnist_v2"), ("breastmnist", "medmnist_v2 hardware.amp=true"),
                         ("breastmnist", "breast_recipe"), ("bloodmnist", "medmnist_v2")}  # fmt: skip
    assert all(r["seeds"] == 2 for r in rows.values())
    assert rows[("bloodmnist", "medmnist_v2")]["paper_r18_acc"] == 0.958


def test_the_experiment_column_leaves_out_what_the_config_hash_leaves_out(tmp_path):
    """Tracking, study, resume and export settings (MACHINE_KEYS) neither split a group nor
    show in its label; a real setting still does."""
    fake_run(tmp_path, "breastmnist", 0, 0.86, 0.9, "medmnist_v2", extra={"optimizer": {"lr": 0.01}},
             overrides=("optimizer.lr=0.01", "tracking=mlflow", "tracking.uri=http://h:5000",
                        "hpo=quick", "training.resume=auto", "+export.onnx=true",
                        "hydra.sweeper.n_trials=4"))  # fmt: skip
    fake_run(tmp_path, "breastmnist", 1, 0.88, 0.9, "medmnist_v2", extra={"optimizer": {"lr": 0.01},
             "tracking": {"uri": "sqlite:///m.db"}}, overrides=("optimizer.lr=0.01",))  # fmt: skip
    rows = by_key(compare([tmp_path]))
    assert list(rows) == [("breastmnist", "medmnist_v2 optimizer.lr=0.01")]
    assert rows[("breastmnist", "medmnist_v2 optimizer.lr=0.01")]["seeds"] == 2


def test_the_experiment_key_ignores_the_seed_and_machine_paths_only():
    base = {"training": {"seed": 0, "epochs": 5}, "dataset": {"name": "x", "root": "/a"}}
    same = {"training": {"seed": 7, "epochs": 5}, "dataset": {"name": "x", "root": "/b"}}
    other = {"training": {"seed": 0, "epochs": 6}, "dataset": {"name": "x", "root": "/a"}}
    assert seedless_hash(base) == seedless_hash(same) != seedless_hash(other)


def test_a_repeated_seed_keeps_the_latest_run_and_says_so(tmp_path):
    fake_run(tmp_path, "breastmnist", 0, 0.70, 0.9, finished="2026-01-01T00:00:01")
    fake_run(tmp_path, "breastmnist", 0, 0.80, 0.9, finished="2026-01-01T00:00:02")
    fake_run(tmp_path, "breastmnist", 1, 0.90, 0.9)
    comparison = compare([tmp_path])
    row = by_key(comparison)[("breastmnist", "default")]
    assert row["seeds"] == 2 and row["acc_mean"] == pytest.approx(0.85)
    assert any("seed 0 ran more than once" in n for n in comparison.notes)


def test_one_seed_has_no_std_and_runs_without_hydra_record_still_count(tmp_path):
    fake_run(tmp_path, "pathmnist", 0, 0.9, 0.98, hydra=False)
    comparison = compare([tmp_path])
    row = by_key(comparison)[("pathmnist", "default")]
    assert row["seeds"] == 1 and row["acc_std"] is None and row["seed_list"] == "?"
    assert "0.900 (1 seed)" in to_markdown(comparison)


def test_run_dirs_and_sweep_dirs_can_be_mixed_without_counting_a_run_twice(tmp_path):
    a = fake_run(tmp_path, "breastmnist", 0, 0.8, 0.9)
    fake_run(tmp_path, "breastmnist", 1, 0.9, 0.9)
    row = by_key(compare([a, tmp_path, a / "metrics.json"]))[("breastmnist", "default")]
    assert row["seeds"] == 2


def test_write_puts_both_files_in_place_atomically(tmp_path):
    fake_run(tmp_path / "runs", "breastmnist", 0, 0.8, 0.9)
    md, csv_path = write(compare([tmp_path / "runs"]), tmp_path / "out")
    assert md.read_text().startswith("| dataset |") and csv_path.read_text().startswith("dataset,")
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["comparison.csv", "comparison.md"]  # no temp file left


def test_paths_without_runs_are_clear_errors(tmp_path):
    with pytest.raises(CompareError, match="does not exist"):
        compare([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompareError, match="holds no finished run"):
        compare([tmp_path / "empty"])
    (tmp_path / "started" / "0_x").mkdir(parents=True)
    (tmp_path / "started" / "0_x" / "provenance.json").write_text("{}")
    with pytest.raises(CompareError, match="have not finished or failed"):
        compare([tmp_path / "started"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.json").write_text(json.dumps({"history": []}))
    with pytest.raises(CompareError, match="lacks test accuracy"):
        compare([bad])


# ------------------------------------------------------------------ the command line


def test_cli_prints_the_table_and_writes_into_the_sweep_dir(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for s in (0, 1, 2):
        fake_run(sweep, "breastmnist", s, 0.85, 0.9, "medmnist_v2")
    assert compare_main([str(sweep)]) == 0
    out = capsys.readouterr()
    assert "| breastmnist | medmnist_v2 | 3 (0,1,2) | 0.850 ± 0.000 |" in out.out
    assert (sweep / "comparison.md").is_file() and (sweep / "comparison.csv").is_file()
    assert "written:" in out.err


def test_cli_with_run_dirs_writes_to_out_and_never_into_a_run(tmp_path, monkeypatch, capsys):
    run = fake_run(tmp_path, "breastmnist", 0, 0.85, 0.9)
    monkeypatch.chdir(tmp_path)
    assert compare_main([str(run)]) == 0
    assert (tmp_path / "comparison.md").is_file() and not (run / "comparison.md").exists()
    assert compare_main([str(run), "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "comparison.csv").is_file()


PROBE = (
    "import sys\nfrom orchard_app.compare.__main__ import main\n"
    "try:\n    code = main()\nfinally:\n"
    "    print('TORCH_IMPORTED=' + str('torch' in sys.modules), file=sys.stderr)\n"
    "raise SystemExit(code)\n"
)


def test_cli_bad_path_is_one_message_exit_1_no_traceback_and_no_torch(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "missing")],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "cannot compare" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr and "TORCH_IMPORTED=False" in result.stderr


def test_cli_as_a_module_help_and_exit_codes(tmp_path):
    run = [sys.executable, "-m", "orchard_app.compare"]
    helped = subprocess.run([*run, "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "ddof=1" in helped.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = subprocess.run([*run, str(empty)], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "holds no finished run" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert subprocess.run(run, capture_output=True, text=True, timeout=60).returncode == 2  # usage


@pytest.mark.slow
def test_a_real_sweep_then_compare(tiny_npz, tmp_path):
    """The issue's two commands, shrunk: a 2-seed sweep of the protocol, then the table."""
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m", "experiment=medmnist_v2", *tiny_overrides(tiny_npz), "training.seed=0,1",
        "training.batch_size=32", f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    done = subprocess.run([sys.executable, "-m", "orchard_app.compare", str(sweep)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("| npz | medmnist_v2 "))
    assert "model=mini_cnn" in row and "| 2 (0,1) |" in row  # both seeds, one experiment
    assert "npz: not in the MedMNIST v2 paper" in done.stdout


# ------------------------------------------------------------------ hardware=auto precision


def test_cpu_bf16_flags_are_read_from_cpuinfo(tmp_path):
    from orchard_app.engine.precision import cpu_bf16_flags

    (tmp_path / "x86").write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16\n")
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    (tmp_path / "old").write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512bw\n")
    assert cpu_bf16_flags(tmp_path / "x86") == ["amx_bf16", "avx512_bf16"]
    assert cpu_bf16_flags(tmp_path / "arm") == ["bf16"]
    assert cpu_bf16_flags(tmp_path / "old") == [] == cpu_bf16_flags(tmp_path / "missing")


@pytest.mark.parametrize(("flags", "expected"), [(["amx_bf16"], "bf16"), ([], None)])
def test_hardware_auto_uses_bf16_on_cpu_only_where_native_and_says_so(
    monkeypatch, caplog, flags, expected
):
    import torch

    from orchard_app.engine import precision

    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: flags)
    cfg = compose("hardware=auto")
    assert cfg.hardware.amp is None
    with caplog.at_level(logging.INFO, logger="orchard_app"):
        dtype = precision.amp_dtype(cfg.hardware, torch.device("cpu"))
    assert dtype == (torch.bfloat16 if expected else None)
    lines = [r.getMessage() for r in caplog.records if "precision" in r.getMessage()]
    assert len(lines) == 1
    assert ("natively (amx_bf16)" in lines[0]) if expected else ("no native bf16" in lines[0])
    # an explicit choice is never overridden
    cpu = torch.device("cpu")
    assert precision.amp_dtype(compose("hardware.amp=true").hardware, cpu) == torch.bfloat16
    assert precision.amp_dtype(compose("hardware.amp=false").hardware, cpu) is None


def test_an_unreadable_metrics_json_is_noted_and_the_rest_compared(tmp_path):
    for seed in (0, 1):
        fake_run(tmp_path, "breastmnist", seed, 0.8, 0.9)
    broken = fake_run(tmp_path, "breastmnist", 2, 0.8, 0.9)
    (broken / "metrics.json").write_text('{"test": ')
    comparison = compare([tmp_path])
    assert by_key(comparison)[("breastmnist", "default")]["seeds"] == 2
    assert [n for n in comparison.notes if "metrics.json" in n and "cannot be read" in n]


def test_500_copies_of_one_run_are_one_note_and_fast(tmp_path):
    import time

    for i in range(500):
        fake_run(tmp_path / str(i), "breastmnist", 0, 0.8, 0.9, finished=f"2026-01-01T00:{i:04d}")
    started = time.perf_counter()
    comparison = compare([tmp_path])
    assert time.perf_counter() - started < 1.0
    repeated = [n for n in comparison.notes if "ran more than once" in n]
    assert len(repeated) == 1 and "499 earlier runs left out" in repeated[0]


def test_experiment_none_is_no_preset_and_a_null_in_a_sweep_names_it(tmp_path):
    from omegaconf import OmegaConf

    assert OmegaConf.to_yaml(compose("experiment=none")) == OmegaConf.to_yaml(compose())
    result = run_cli("-m", "experiment=mini_cnn_flips,null", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "sweep experiment=none" in result.stderr and not (tmp_path / "multirun").exists()
