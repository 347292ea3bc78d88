"""Deployment export: ONNX fp32 and INT8 with the preprocessing inside the graph, checked
against PyTorch, benchmarked side by side; at the end of training and from a run directory."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, compose, make_npz, only_run_dir, run_cli, tiny_overrides

from orchard_app import train
from orchard_app.config.validate import validate
from orchard_app.errors import ConfigError, ExportError

# Small enough for tests: few timed runs, few random and calibration images.
QUICK = ["export.latency_repeats=2", "export.latency_warmup=1", "export.latency_batch_sizes=[1,8]",
         "export.random_samples=8", "export.calibration_samples=32"]  # fmt: skip
EXPORTS = ("model.onnx", "model_int8.onnx", "benchmark.json")


def session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def metadata(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


THIS_CHECKOUT = {"PYTHONPATH": str(ROOT)}  # subprocesses run this checkout's orchard_app


def export_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m orchard_app.export <args>`, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "orchard_app.export", *args], cwd=cwd, capture_output=True,
        text=True, timeout=300, stdin=subprocess.DEVNULL,
        env={**os.environ, **THIS_CHECKOUT, "PYTHONUNBUFFERED": "1", **(env or {})},
    )  # fmt: skip


def test_preprocess_is_the_training_pipelines_conversion(tmp_path):
    """The module the exporter puts in front of the model gives the pipeline's batches, bit
    for bit (grey images expanded to the 3 channels the model takes)."""
    from orchard_app.run.assemble import assemble
    from orchard_app.run.context import RunContext

    npz = make_npz(tmp_path / "grey.npz")
    cfg = compose(*tiny_overrides(npz, "dataset.force_rgb=true", "dataset.mean=0.4",
                                  "dataset.std=0.3"))  # fmt: skip
    pipeline = assemble(cfg, RunContext.create(cfg, tmp_path)).pipeline
    test = pipeline.data.test
    x, _ = next(pipeline.eval_batches(test, len(test)))
    raw = test.rows(torch.arange(len(test)))
    assert raw.dtype == torch.uint8 and raw.shape[1] == 1 and x.shape[1] == 3
    assert torch.equal(pipeline.preprocess(raw), x)
    assert torch.equal(pipeline.preprocess(raw.float()), x)  # float in [0, 255] works too
    assert raw.dtype == torch.uint8  # the input is never changed in place


def test_mini_cnn_export_validate_quantize_at_the_end_of_training(tmp_path):
    npz = make_npz(tmp_path / "d.npz", classes=4)
    run = tmp_path / "run"
    train(compose(*tiny_overrides(npz, "export.enabled=true", "dataset.force_rgb=true",
                                  "dataset.label_names=[a,b,c,d]", *QUICK)), output_dir=run)  # fmt: skip
    exports = run / "exports"
    assert sorted(p.name for p in exports.iterdir()) == sorted(EXPORTS)  # no .data, no temp files
    bench = read_json(exports / "benchmark.json")
    assert bench["deviation"]["passed"] and bench["deviation"]["max"] <= 1e-4
    assert bench["deviation"]["test_samples"] == 32 and bench["deviation"]["random_samples"] == 8
    assert set(bench["models"]) == {"pytorch", "onnx_fp32", "onnx_int8"}
    for model in bench["models"].values():
        assert set(model["test"]) == {"accuracy", "auc", "macro_f1", "balanced_accuracy"}
        assert set(model["latency_ms"]) == {"batch_1_ms", "batch_8_ms"}
        assert all(ms > 0 for ms in model["latency_ms"].values())
    lat = bench["latency"]
    assert lat["threads"] == 1 and lat["statistic"] == "median" and lat["repeats"] == 2
    int8 = bench["int8"]
    assert int8["format"] == "QDQ" and "per channel" in int8["weights"]
    assert int8["calibration_samples"] == 32 and int8["max_drop_points"] == 1.0
    accuracy = {name: bench["models"][name]["test"]["accuracy"] for name in bench["models"]}
    drop = round(100 * (accuracy["pytorch"] - accuracy["onnx_int8"]), 3)
    assert int8["accuracy_drop_points"] == pytest.approx(drop)
    assert int8["within_limit"] is (drop <= 1.0)
    # fp32 and the PyTorch model agree on the test split: same metrics
    assert bench["models"]["onnx_fp32"]["test"] == pytest.approx(bench["models"]["pytorch"]["test"])

    meta = metadata(exports / "model.onnx")
    provenance = read_json(run / "provenance.json")
    assert json.loads(meta["class_names"]) == ["a", "b", "c", "d"]
    assert meta["task"] == "multi-class" and meta["input_size"] == "1x28x28"
    assert meta["input_dtype"] == "uint8" and "raw pixel values 0-255" in meta["input_format"]
    assert meta["config_hash"] == provenance["config_hash"] == bench["config_hash"]
    assert json.loads(meta["preprocessing"])["expand_channels"] == "1 -> 3"
    int8_meta = metadata(exports / "model_int8.onnx")
    assert int8_meta["config_hash"] == meta["config_hash"] and "int8" in int8_meta["precision"]

    sess = session(exports / "model.onnx")
    (inp,) = sess.get_inputs()
    assert inp.name == "image" and inp.type == "tensor(uint8)" and inp.shape[1:] == [1, 28, 28]
    assert isinstance(inp.shape[0], str)  # a dynamic batch axis
    report = (run / "report.md").read_text()
    assert "## Deployment export" in report and "| ONNX INT8 |" in report
    assert "1 thread(s)" in report and report.index("## Deployment export") < report.index(
        "## Epochs"
    )


def test_onnx_on_raw_uint8_test_images_predicts_as_the_training_pipeline(shared_medmnist, tmp_path):
    """Real BreastMNIST test images (grey, expanded to RGB inside the graph), fed as stored:
    batch sizes 1 and 5 give the predictions of the trained model's own test evaluation."""
    run = tmp_path / "run"
    args = ["dataset=breastmnist", f"dataset.root={shared_medmnist}", "dataset.force_rgb=true",
            "model=mini_cnn", "training.epochs=1", "evaluation.figures=false",
            "hardware.num_threads=1", "export.enabled=true", *QUICK]  # fmt: skip
    train(compose(*args), output_dir=run)
    images = np.load(shared_medmnist / "breastmnist.npz")["test_images"][:, None]  # N x 1 x H x W
    with open(run / "predictions_test.csv") as f:
        rows = list(csv.DictReader(f))
    expected = np.array(
        [[float(r[f"prob_{c}"]) for c in ("malignant", "normal_benign")] for r in rows]
    )
    for name in ("model.onnx", "model_int8.onnx"):
        sess = session(run / "exports" / name)
        for batch in (1, 5):
            probs = np.concatenate([
                sess.run(None, {"image": images[i : i + batch]})[0]
                for i in range(0, len(images), batch)
            ])  # fmt: skip
            assert probs.shape == expected.shape
            if name == "model.onnx":
                assert np.array_equal(probs.argmax(1), expected.argmax(1))
                assert np.abs(probs - expected).max() < 1e-5  # the CSV keeps 6 decimals
            else:  # INT8: its own agreement with PyTorch is what benchmark.json reports
                agree = np.mean(probs.argmax(1) == expected.argmax(1))
                bench = read_json(run / "exports" / "benchmark.json")
                assert agree == pytest.approx(bench["int8"]["prediction_agreement"], abs=1e-6)


@pytest.mark.slow
def test_resnet18_adapted_run_exported_from_its_run_dir_never_fetches_pretrained_weights(tmp_path):
    """resnet18_adapted trained one short epoch from the command line, then exported by the
    second entry point from its run dir (config from .hydra/config.yaml) with
    model.pretrained=true: the weights come from the checkpoint, no pretrained file is touched."""
    npz = make_npz(tmp_path / "d.npz", classes=3, channels=3, counts=(64, 32, 32))
    trained = run_cli(*tiny_overrides(npz, "model=resnet18_adapted"), cwd=tmp_path,
                      env=THIS_CHECKOUT)  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    run = only_run_dir(tmp_path)
    torch_home = tmp_path / "torch_home"
    result = export_cli(str(run), "model.pretrained=true", *QUICK, cwd=tmp_path,
                        env={"TORCH_HOME": str(torch_home)})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not torch_home.exists()  # nothing fetched, nothing even looked up there
    assert "ONNX INT8" in result.stderr and "Traceback" not in result.stderr
    bench = read_json(run / "exports" / "benchmark.json")
    assert bench["model"] == "resnet18_adapted" and bench["deviation"]["passed"]
    assert bench["models"]["onnx_int8"]["size_mb"] < bench["models"]["onnx_fp32"]["size_mb"] / 3
    x = np.load(npz)["test_images"].transpose(0, 3, 1, 2)  # stored N x H x W x C -> NCHW
    for name in ("model.onnx", "model_int8.onnx"):
        sess = session(run / "exports" / name)
        for batch in (1, 5):
            assert sess.run(None, {"image": np.ascontiguousarray(x[:batch])})[0].shape == (batch, 3)


def test_multi_label_export_gives_one_sigmoid_per_label(tmp_path):
    npz = make_npz(tmp_path / "ml.npz", classes=4, multilabel=True)
    run = tmp_path / "run"
    train(compose(*tiny_overrides(npz, "export.enabled=true", "export.int8=false", *QUICK)),
          output_dir=run)  # fmt: skip
    bench = read_json(run / "exports" / "benchmark.json")
    assert bench["task"] == "multi-label" and bench["int8"] is None and bench["deviation"]["passed"]
    assert "sigmoid" in metadata(run / "exports" / "model.onnx")["output"]
    x = np.load(npz)["test_images"][:5, None]
    probs = session(run / "exports" / "model.onnx").run(None, {"image": x})[0]
    assert probs.shape == (5, 4) and not np.allclose(probs.sum(1), 1)  # not a softmax
    assert sorted(p.name for p in (run / "exports").iterdir()) == ["benchmark.json", "model.onnx"]


@pytest.mark.slow  # a CLI run of several seconds: the fast suite stays under 3 minutes
def test_deviation_beyond_the_tolerance_fails_with_the_deviation_printed(tmp_path):
    npz = make_npz(tmp_path / "d.npz")
    args = tiny_overrides(npz, "export.enabled=true", "export.max_deviation=1e-15",
                          "hardware.deterministic=true", *QUICK)  # fmt: skip
    result = run_cli(*args, cwd=tmp_path, env=THIS_CHECKOUT)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert "deployment export failed" in result.stderr
    assert "export.max_deviation=1e-15" in result.stderr
    assert "max |p_onnx - p_torch| = " in result.stderr and "export.strict=false" in result.stderr
    run = only_run_dir(tmp_path)
    assert not (run / "exports" / "model.onnx").exists()  # failed its check: not kept
    assert (run / "metrics.json").is_file()  # the training's results are
    assert read_json(run / "provenance.json")["status"] == "failed"

    # export.strict=false: the same deviation only warns, and the model is kept
    lenient = tmp_path / "lenient"
    train(compose(*args, "export.strict=false"), output_dir=lenient)
    bench = read_json(lenient / "exports" / "benchmark.json")
    assert not bench["deviation"]["passed"] and (lenient / "exports" / "model.onnx").is_file()
    assert "**FAILED**" in (lenient / "report.md").read_text()


def test_export_entry_point_exports_an_existing_run_dir(finished_run, tmp_path, capsys):
    """A finished run exported afterwards by the second entry point (in-process here; the
    command line in the resnet18_adapted test) with an override, its config composed from the
    checkpoint's; the report gets the export section once, however often it is exported."""
    from orchard_app.evaluation.report import update_export_section
    from orchard_app.export.__main__ import main

    run = tmp_path / "run"  # a copy of train(compose(*tiny_overrides(npz)), output_dir=run)
    shutil.copytree(finished_run[0], run)
    assert not (run / "exports").exists()

    main([str(run), "export.opset=19", *QUICK])
    console = capsys.readouterr().err
    assert sorted(p.name for p in (run / "exports").iterdir()) == sorted(EXPORTS)
    bench = read_json(run / "exports" / "benchmark.json")
    assert bench["opset"] == 19 and bench["deviation"]["passed"]
    assert bench["config_hash"] == read_json(run / "provenance.json")["config_hash"]
    assert bench["checkpoint"] == str(run / "checkpoints" / "best.pt") and bench["epoch"] == 1
    assert "ONNX INT8" in console and f"done: {run / 'exports'}" in console
    assert session(run / "exports" / "model.onnx").get_inputs()[0].type == "tensor(uint8)"

    update_export_section(run / "report.md", bench)  # as a second export does
    assert (run / "report.md").read_text().count("## Deployment export") == 1


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["{missing}"], 1, "no such run directory or checkpoint file"),
        (["{run}", "export.opst=19"], 2, "export.opst"),
        (["{run}", "export.opset=12"], 2, "export.opset=12"),
    ],
)
def test_export_entry_point_errors_are_one_message(args, code, says, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"format": 1}, run / "checkpoints" / "best.pt")  # never read: the config fails first
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("training:\n  epochs: 1\n")
    args = [a.format(run=run, missing=tmp_path / "nothing") for a in args]
    result = export_cli(*args, cwd=tmp_path)
    assert result.returncode == code, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr


def test_unsupported_operation_is_named(tmp_path):
    from orchard_app.export.onnx_export import export_onnx

    class Cumulative(torch.nn.Module):
        def forward(self, x):
            return torch.cummax(x.float().flatten(1), 1).values[:, :3]

    with pytest.raises(ExportError, match=r"the operation aten\.cummax has no ONNX translation"):
        export_onnx(Cumulative(), torch.zeros(2, 1, 8, 8, dtype=torch.uint8),
                    tmp_path / "m.onnx", 18, {}, model_name="model=cumulative")  # fmt: skip
    assert not (tmp_path / "m.onnx").exists()


def test_export_settings_are_validated_before_anything_is_built():
    cfg = compose("export.opset=12", "export.max_deviation=0", "export.latency_batch_sizes=[]",
                  "export.calibration_samples=0", "export.threads=0")  # fmt: skip
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    fields = [p.split("=")[0] for p in err.value.problems]
    assert fields == ["export.opset", "export.max_deviation", "export.calibration_samples",
                      "export.threads", "export.latency_batch_sizes"]  # fmt: skip


PROBE = (
    "import sys; sys.argv = ['orchard_app.export', *sys.argv[1:]]\n"
    "from orchard_app.export.__main__ import main\n"
    "try:\n    main()\nfinally:\n    print('HEAVY=' + str(sorted(m for m in ('torch', 'onnx', "
    "'onnxruntime') if m in sys.modules)), file=sys.stderr)\n"
)


def test_export_help_imports_neither_torch_nor_onnx(tmp_path):
    result = subprocess.run([sys.executable, "-c", PROBE, "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "HEAVY=[]" in result.stderr
    assert "run directory" in result.stdout and "export.opset" in result.stdout


@pytest.mark.slow
def test_exports_are_logged_to_mlflow_at_the_end_of_training_and_by_a_later_export(tmp_path):
    from mlflow import MlflowClient

    from orchard_app.export.__main__ import main

    db, run_dir = tmp_path / "mlflow.db", tmp_path / "r"
    npz = make_npz(tmp_path / "d.npz")
    train(compose(*tiny_overrides(npz, "export.enabled=true", "tracking=mlflow",
                                  f"tracking.uri=sqlite:///{db}", *QUICK)), output_dir=run_dir)  # fmt: skip
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("orchard_app").experiment_id])
    files = {a.path for a in client.list_artifacts(run.info.run_id, "exports")}
    assert files == {f"exports/{name}" for name in EXPORTS}
    metrics = run.data.metrics
    assert metrics["export/onnx_fp32/accuracy"] == pytest.approx(metrics["export/pytorch/accuracy"])
    assert "export/onnx_int8/batch_1_ms" in metrics and "export/max_deviation" in metrics

    assert "Deployment export" in (run_dir / "report.html").read_text()  # rendered again
    main([str(run_dir), *QUICK])  # a later export adds to the same MLflow run
    history = client.get_metric_history(run.info.run_id, "export/onnx_fp32/accuracy")
    assert len(history) == 2 and len(client.search_runs([run.info.experiment_id])) == 1


ZOO = [("mini_cnn", 28), ("resnet18_adapted", 28), ("resnet18", 64), ("efficientnet_b0", 28),
       ("convnext_tiny", 64), ("vit_tiny", 224), ("timm", 64)]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("name", "side"), ZOO)
def test_every_model_in_the_zoo_exports_and_matches_pytorch(name, side, tmp_path):
    """Each conf/model entry (untrained, exportable build) through the deployable graph: one
    ONNX file whose probabilities on random uint8 images match PyTorch's at batch 1 and 5."""
    from orchard_app.data.preprocess import Preprocess
    from orchard_app.export.graph import Deployable, torch_predictor
    from orchard_app.export.onnx_export import export_onnx
    from orchard_app.export.validate import max_deviation, random_images
    from orchard_app.models import build_model

    cfg = compose(f"model={name}", f"dataset.resolution={side}")
    model = build_model(cfg.model, 3, 4, resolution=side, exportable=True)
    deployable = Deployable(Preprocess(0.5, 0.5, channels=1, in_chans=3), model, False).eval()
    sample = torch.from_numpy(random_images(2, (1, side, side), seed=0))
    export_onnx(deployable, sample, tmp_path / "m.onnx", 18, {"model": name}, model_name=name)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # one self-contained file
    sess = session(tmp_path / "m.onnx")
    for batch in (1, 5):
        x = random_images(batch, (1, side, side), seed=batch)
        got = sess.run(None, {"image": x})[0]
        assert max_deviation(torch_predictor(deployable)(x), got) < 1e-4


def test_export_warns_when_the_checkpoint_is_another_runs_or_the_run_did_not_complete(
    finished_run, tmp_path, capsys
):
    from orchard_app.export.__main__ import main

    run = tmp_path / "run"
    shutil.copytree(finished_run[0], run)
    prov = read_json(run / "provenance.json")
    (run / "provenance.json").write_text(json.dumps({**prov, "status": "interrupted",
                                                     "config_hash": "f" * 32}))  # fmt: skip
    main([str(run), "export.int8=false", *QUICK])
    warnings = [line for line in capsys.readouterr().err.splitlines() if "export: " in line]
    assert any("belongs to another run" in w and "ffffffff" in w for w in warnings), warnings
    assert any("did not complete (status interrupted)" in w and "epoch 1" in w for w in warnings)


@pytest.mark.slow  # a CLI run of several seconds: the fast suite stays under 3 minutes
def test_export_warns_when_the_best_checkpoint_was_changed_after_the_run(
    finished_run, tmp_path, capsys
):
    from orchard_app.engine.checkpoint import load_checkpoint, save_checkpoint
    from orchard_app.export.__main__ import main

    run = tmp_path / "run"
    shutil.copytree(finished_run[0], run)
    main([str(run), "export.int8=false", *QUICK])
    first = capsys.readouterr().err
    assert (
        "another run" not in first
        and "changed after" not in first
        and "did not complete" not in first
    )
    best = run / "checkpoints" / "best.pt"
    ckpt = load_checkpoint(best)
    name = next(iter(ckpt["model"]))
    ckpt["model"][name] = ckpt["model"][name] * 1.5
    save_checkpoint(best, ckpt)
    main([str(run), "export.int8=false", *QUICK])
    assert "was changed after its run finished" in capsys.readouterr().err


def test_int8_probabilities_sum_to_one(finished_run, tmp_path):
    import numpy as np

    from orchard_app.export.__main__ import main

    run = tmp_path / "run"
    shutil.copytree(finished_run[0], run)
    main([str(run), *QUICK])
    int8 = session(run / "exports" / "model_int8.onnx")
    image = int8.get_inputs()[0]
    x = np.random.default_rng(0).integers(0, 256, (64, *image.shape[1:]), dtype=np.uint8)
    sums = int8.run(None, {image.name: x})[0].sum(1)
    assert np.abs(sums - 1).max() < 1e-5, (sums.min(), sums.max())
