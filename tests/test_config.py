"""Config composition, validation and the fast command-line paths (--help, --cfg job)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import ROOT, compose, make_npz, only_run_dir, run_cli, tiny_overrides
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from orchard_app.config import (
    choices,
    config_hash,
    direction_of,
    experiment_view,
    monitor_direction,
)
from orchard_app.config.resolvers import SLUG_MAX_LEN, resolved_container, slug
from orchard_app.config.validate import validate
from orchard_app.errors import ConfigError

GROUPS = ("dataset", "model", "optimizer", "scheduler", "hardware", "tracking")


def group_options():
    for group in GROUPS:
        for yaml in sorted((ROOT / "conf" / group).glob("*.yaml")):
            yield group, yaml.stem


@pytest.mark.parametrize(("group", "option"), list(group_options()))
def test_every_group_option_composes_and_validates(group, option, tmp_path):
    extra = [f"dataset.path={tmp_path / 'x'}"] if option in ("npz", "folder") else []
    cfg = compose(f"{group}={option}", *extra)
    assert cfg[group] is not None
    if group == "model" and cfg.model.resolutions and 28 not in cfg.model.resolutions:
        cfg = compose(f"{group}={option}", f"dataset.resolution={cfg.model.resolutions[-1]}")
    validate(cfg)


def test_public_interface_keys_exist():
    cfg = compose()
    for key in ("dataset.root", "dataset.resolution", "dataset.max_samples", "model.pretrained", "optimizer.lr",
                "optimizer.weight_decay", "hardware.device", "hardware.deterministic", "hardware.num_threads",
                "training.epochs", "training.batch_size", "training.seed", "training.resume", "training.monitor"):  # fmt: skip
        parent, _, leaf = key.rpartition(".")
        assert leaf in cfg[parent], key


def test_data_root_defaults_to_env_then_medmnist_home(monkeypatch):
    monkeypatch.setenv("ORCHARD_DATA_DIR", "/data/medmnist")
    assert compose().dataset.root == "/data/medmnist"
    monkeypatch.delenv("ORCHARD_DATA_DIR")
    assert compose().dataset.root == "~/.medmnist"  # medmnist's own default: reuse its downloads


def test_config_hash_names_the_experiment_not_the_machine(monkeypatch, tmp_path):
    here = config_hash(compose("optimizer=sgd"))
    monkeypatch.setenv("ORCHARD_DATA_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("ORCHARD_CACHE_DIR", str(tmp_path / "cache"))
    there = compose("optimizer=sgd", f"training.resume={tmp_path / 'last.pt'}", "tracking=mlflow",
                    "tracking.uri=http://tracker:5000", "dataset.download=false",
                    "dataset.mirror=https://mirror.example/medmnist")  # fmt: skip
    assert there.dataset.root == str(tmp_path / "elsewhere")
    assert config_hash(there) == here  # the run-dir name (orchard_hash) and provenance use it
    assert config_hash(compose("optimizer=sgd", "optimizer.lr=0.1")) != here


def test_experiment_view_drops_only_the_machine_keys():
    job = resolved_container(compose())
    view = experiment_view(job)
    assert "tracking" not in view and "resume" not in view["training"]
    assert not {"root", "cache_dir", "download", "mirror"} & set(view["dataset"])
    assert view["dataset"]["name"] == "digits" and view["training"]["epochs"] == 20
    assert job["tracking"]["name"] == "none" and "root" in job["dataset"]  # the input is untouched


@pytest.mark.parametrize(
    ("monitor", "mode", "direction"),
    [("val_loss", "auto", "min"), ("val_accuracy", "auto", "max"), ("val_auc", "auto", "max"),
     ("val_macro_f1", "auto", "max"), ("val_balanced_accuracy", "auto", "max"),
     ("val_accuracy", "min", "min"), ("val_loss", "max", "max")],
)  # fmt: skip
def test_monitor_direction_min_for_a_loss_else_max_unless_told(monitor, mode, direction):
    assert monitor_direction(monitor, mode) == direction
    overrides = [f"training.monitor={monitor}", f"training.monitor_mode={mode}"]
    assert direction_of(compose(*overrides)) == direction
    with pytest.raises(ValueError, match="auto, min or max"):
        monitor_direction(monitor, "up")


def test_monitor_direction_is_read_without_torch():
    code = "import sys; from orchard_app.config import monitor_direction; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.parametrize(
    ("override", "field", "hint"),
    [
        ("training.epochs=0", "training.epochs", ">= 1"),
        ("optimizer.lr=-1", "optimizer.lr", "> 0"),
        ("training.batch_size=0", "training.batch_size", ">= 1"),
        ("dataset.resolution=32", "dataset.resolution", "28, 64, 128, 224"),
        ("hardware.device=gpu", "hardware.device", "cuda"),
        ("optimizer=adamw optimizer.nesterov=true", "optimizer.nesterov", "sgd"),
    ],
)
def test_invalid_values_are_reported_with_field_and_allowed_values(override, field, hint):
    with pytest.raises(ConfigError) as err:
        validate(compose(*override.split()))
    text = str(err.value)
    assert field in text and hint in text


@pytest.mark.parametrize(
    ("key", "kind"),
    [("optimizer.name", choices.Optimizer), ("scheduler.name", choices.Scheduler),
     ("dataset.source", choices.Source), ("dataset.task", choices.Task),
     ("tracking.name", choices.Tracker), ("training.monitor", choices.Monitor),
     ("training.monitor_mode", choices.MonitorMode), ("hardware.amp_dtype", choices.AmpDtype)],
)  # fmt: skip
def test_a_value_outside_its_list_is_refused_while_composing(key, kind):
    with pytest.raises(ConfigCompositionException) as err:
        compose(f"{key}=val_banana")
    text = str(err.value.__cause__)
    assert key in text and "'val_banana'" in text
    assert all(f"'{o}'" in text for o in choices.options(kind))


def test_list_values_stay_plain_strings():
    cfg = compose("optimizer=sgd", "dataset=chestmnist", "tracking=mlflow")
    assert type(cfg.optimizer.name) is str and cfg.optimizer.name == "sgd"
    job = resolved_container(cfg)  # saved in checkpoints (weights_only loads), hashed, logged
    picked = (job["optimizer"]["name"], job["dataset"]["task"], job["tracking"]["name"],
              job["training"]["monitor"], job["hardware"]["amp_dtype"])  # fmt: skip
    assert picked == ("sgd", "multi-label", "mlflow", "val_accuracy", "auto")
    assert all(type(v) is str for v in picked)


def test_validate_checks_the_lists_in_a_config_built_without_types():
    job = resolved_container(compose())
    job["optimizer"]["name"], job["dataset"]["task"] = "sgdd", None
    with pytest.raises(ConfigError) as err:
        validate(OmegaConf.create(job))
    assert err.value.problems == ["optimizer.name=sgdd: must be one of sgd, adam, adamw"]


def test_null_passes_a_rule_only_when_declared_nullable():
    job = resolved_container(compose())  # untyped: a null reaches the rules
    job["training"]["epochs"], job["training"]["grad_clip"] = None, None  # grad_clip: float | None
    with pytest.raises(ConfigError) as err:
        validate(OmegaConf.create(job))
    assert err.value.problems == [
        "training.epochs=null: must be an integer >= 1, e.g. training.epochs=10"
    ]


@pytest.mark.parametrize(
    ("override", "problem"),
    [("optimizer.lr=inf", "optimizer.lr=inf: must be a finite number > 0, e.g. optimizer.lr=1e-3"),
     ("optimizer.lr=nan", "optimizer.lr=nan: must be a finite number > 0, e.g. optimizer.lr=1e-3"),
     ("scheduler.gamma=-inf", "scheduler.gamma=-inf: must be a finite number in (0, 1]"),
     ("training.grad_clip=inf", "training.grad_clip=inf: must be a finite number > 0 (max gradient norm), or null to disable"),
     ("dataset.augment.rotation=nan", "dataset.augment.rotation=nan: must be a finite number in [0, 180] degrees"),
     ("dataset.mean=inf", "dataset.mean=inf: must be a finite number"),  # no range rule of its own
     ("optimizer.betas=[0.9,inf]", "optimizer.betas=[0.9, inf]: must be finite numbers: two values in [0, 1), e.g. [0.9,0.999]")],
)  # fmt: skip
def test_nan_and_inf_are_refused_in_float_fields(override, problem):
    with pytest.raises(ConfigError) as err:
        validate(compose(override))
    assert err.value.problems == [problem]


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as err:
        validate(compose("training.epochs=0", "optimizer.lr=-1"))
    assert len(err.value.problems) == 2


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("training.epochs=0", "training.epochs"),
        ("optimizer.lr=-1", "optimizer.lr"),
        ("training.batch_size=0", "training.batch_size"),
        ("dataset.resolution=32", "dataset.resolution"),
    ],  # fmt: skip
)
def test_cli_rejects_bad_values_without_traceback(override, field, tmp_path):
    result = run_cli(override, cwd=tmp_path)
    assert result.returncode == 2
    assert field in result.stderr and "invalid config" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "outputs").exists() or not any(
        (tmp_path / "outputs").rglob("metrics.json")
    )


def test_cli_wrong_type_names_the_field_without_traceback(tmp_path):
    result = run_cli("training.epochs=abc", cwd=tmp_path)
    assert result.returncode != 0
    assert "training.epochs" in result.stderr and "Traceback" not in result.stderr


def test_cli_misspelt_key_is_refused(tmp_path):
    result = run_cli("training.epoch=3", cwd=tmp_path)
    assert result.returncode != 0
    assert "epoch" in result.stderr and "Traceback" not in result.stderr


def test_cli_value_outside_its_list_is_one_message_without_traceback(tmp_path):
    result = run_cli("optimizer.name=foo", cwd=tmp_path)
    assert result.returncode != 0
    assert "optimizer.name" in result.stderr
    assert "expected one of ['sgd', 'adam', 'adamw']" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "outputs").exists()  # refused while composing, before the run dir


@pytest.mark.parametrize("plus", ["+", "++"])
def test_keys_added_with_plus_are_refused_by_validate(plus):
    with pytest.raises(ConfigError) as err:
        validate(compose(f"{plus}training.epoch=3", f"{plus}evaluation.figurez.png=true"))
    assert err.value.problems == [
        "training.epoch: not a known key; did you mean training.epochs?",
        "evaluation.figurez: not a known key; did you mean evaluation.figures?",
    ]


def test_unknown_key_without_a_near_name_lists_the_known_ones():
    with pytest.raises(ConfigError) as err:
        validate(compose("+banana=1"))
    assert err.value.problems == [
        "banana: not a known key; the keys of the config are dataset, model, optimizer, "
        "scheduler, hardware, tracking, training, evaluation, hpo, export"
    ]


def test_model_params_takes_any_key():
    validate(compose("+model.params.width=32", "++model.params.depth=2"))


def test_cli_refuses_a_key_added_with_plus(tmp_path):
    result = run_cli("+training.epoch=3", cwd=tmp_path)
    assert result.returncode == 2
    assert "training.epoch: not a known key; did you mean training.epochs?" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("name", "safe"),
    [("bloodmnist", "bloodmnist"), ("../../../x", "_.._.._x"), ("a/b\\c", "a_b_c"),
     (".hidden", "hidden"), ("..", "_"), ("hf_hub:timm/vit+x-1.0", "hf_hub_timm_vit+x-1.0"),
     ("x" * 300, "x" * SLUG_MAX_LEN)],
)  # fmt: skip
def test_slug_makes_a_name_one_safe_path_component(name, safe):
    assert slug(name) == safe


@pytest.mark.slow  # a CLI run of several seconds: the fast suite stays under 3 minutes
def test_run_dir_stays_under_outputs_whatever_the_dataset_name(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    npz = make_npz(tmp_path / "tiny.npz")
    result = run_cli(*tiny_overrides(npz, "dataset.name=../../../x"), cwd=work)
    assert result.returncode == 0, result.stderr
    assert only_run_dir(work).name.startswith("_.._.._x_mini_cnn_")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.npz", "work"]
    assert sorted(p.name for p in work.iterdir()) == ["outputs"]


def test_cli_unknown_group_option_lists_choices(tmp_path):
    result = run_cli("model=resnet999", cwd=tmp_path)
    assert result.returncode != 0
    assert "mini_cnn" in result.stderr and "resnet18_adapted" in result.stderr


PROBE = (
    "import sys; sys.argv = ['orchard_app', *sys.argv[1:]]\n"
    "from orchard_app.__main__ import main\n"
    "try:\n    main()\nfinally:\n    print('TORCH_IMPORTED=' + str('torch' in sys.modules), file=sys.stderr)\n"
)


def help_opens_with_groups_and_examples(text: str) -> None:
    """Every group of conf/ with a one-line description and its options (the default marked),
    then examples of each kind of use, then every key of the composed config."""
    groups_at, examples_at = text.index("== Config groups"), text.index("Examples:")
    keys_at = text.index("== Every key and its value")
    assert groups_at < examples_at < keys_at and "training:\n  epochs:" in text[keys_at:]
    head = text[:examples_at]
    conf = sorted(p.name for p in (ROOT / "conf").iterdir() if p.is_dir() and p.name != "hydra")
    for group in conf:
        described = re.search(rf"^  {group}= +(\S.+)\n +(\S.+)", head, re.M)
        assert described, f"conf/{group} has no description in --help"
        options = sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))
        assert options[0] in described[2], group
    assert (
        "digits (default)" in head and "mini_cnn (default)" in head and "resnet18_adapted" in head
    )
    assert re.search(r"^  hydra/launcher= +\S.*slurm", head, re.M)
    examples = text[examples_at:keys_at]
    for shown in ("python -m orchard_app dataset=", "-m training.seed=0,1,2", "-m hpo=quick",
                  "hydra/launcher=slurm", "tracking=mlflow", "export.enabled=true",
                  "python -m orchard_app.export ", "python -m orchard_app.compare ",
                  "python -m orchard_app.predict "):  # fmt: skip
        assert shown in examples, shown


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--cfg", "job"],
        ["--cfg", "job", "dataset=bloodmnist", "model=resnet18_adapted"],
    ],
)
def test_help_and_cfg_job_do_not_import_torch(args, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "TORCH_IMPORTED=False" in result.stderr
    if args == ["--help"]:
        help_opens_with_groups_and_examples(result.stdout)
    else:
        assert "training:" in result.stdout and "epochs:" in result.stdout
    assert not (tmp_path / "outputs").exists()  # neither creates a run directory
