"""Model zoo: every conf/model option builds, takes what it says it takes, trains a step, and
pretrained weights come from a pre-filled cache without network, or fail clearly."""

from __future__ import annotations

import importlib
import json
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, compose, make_npz, run_cli, tiny_overrides

from orchard_app.config.medmnist import medmnist_sides
from orchard_app.config.validate import validate
from orchard_app.errors import ConfigError, ModelError
from orchard_app.models import build_model

MODELS = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml"))
RESNET18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"

# (min, max) parameters with 3 input channels and 10 classes: published sizes less the 1000-way head.
PARAMETERS = {
    "mini_cnn": (90e3, 130e3),
    "resnet18_adapted": (11.1e6, 11.3e6),
    "resnet18": (11.1e6, 11.3e6),
    "efficientnet_b0": (3.9e6, 4.1e6),
    "convnext_tiny": (27.7e6, 28.0e6),
    "vit_tiny": (5.4e6, 5.6e6),
    "timm": (23.4e6, 23.6e6),  # timm's resnet50, the default model.name
}


@pytest.fixture(autouse=True)
def network(monkeypatch) -> list:
    """No test here may reach the network: every attempt is recorded and fails like offline."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


@pytest.fixture(autouse=True)
def empty_caches(tmp_path, monkeypatch):
    """Empty torch hub and Hugging Face caches, so no test sees weights it did not put there."""
    from huggingface_hub import constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def model_cfg(name: str, *overrides: str):
    return compose(f"model={name}", *overrides).model


def resolutions(name: str) -> list[int]:
    return list(model_cfg(name).resolutions or medmnist_sides())


def run_with(npz, name: str) -> list[str]:
    """tiny_overrides with another model."""
    return [o for o in tiny_overrides(npz) if not o.startswith("model=")] + [f"model={name}"]


def images(chans: int, side: int, n: int = 2) -> torch.Tensor:
    return torch.randn(n, chans, side, side, generator=torch.Generator().manual_seed(0))


# --- every model: shapes, resolutions, parameters, one training step ---------------------------


@pytest.mark.parametrize("chans", [1, 3])
@pytest.mark.parametrize("name", MODELS)
def test_output_shape_at_every_resolution_the_model_takes(name, chans, network):
    model = build_model(model_cfg(name), in_chans=chans, num_classes=5).eval()
    for side in resolutions(name):
        with torch.no_grad():
            assert model(images(chans, side, n=1)).shape == (1, 5), f"{name} at {side} px"
    assert network == []  # building without pretrained weights downloads nothing


def refused(name: str) -> list[int]:
    return sorted(set(medmnist_sides()) - set(resolutions(name)))


@pytest.mark.parametrize("name", [m for m in MODELS if refused(m)])
def test_a_resolution_the_model_cannot_take_is_refused_at_config_time(name):
    model = build_model(model_cfg(name), in_chans=3, num_classes=5).eval()
    for side in refused(name):
        with pytest.raises(ConfigError) as err:
            validate(compose(f"model={name}", f"dataset.resolution={side}"))
        assert f"dataset.resolution={side}:" in str(err.value)
        # and the refusal is needed: the model really fails at that size
        with pytest.raises((RuntimeError, AssertionError)), torch.no_grad():
            model(images(3, side, n=1))


def test_vit_at_28_px_is_refused_before_any_data_is_loaded(tmp_path, monkeypatch):
    train_module = importlib.import_module("orchard_app.run.train")
    assembly = importlib.import_module("orchard_app.run.assemble")

    def no_data(*args, **kwargs):
        raise AssertionError("data was loaded")

    monkeypatch.setattr(assembly, "load_dataset", no_data)
    with pytest.raises(ConfigError) as err:
        train_module.train(compose("model=vit_tiny"), output_dir=tmp_path / "run")
    assert "dataset.resolution=28: vit_tiny_patch16_224 takes 224 px" in str(err.value)
    assert not (tmp_path / "run").exists()


def test_any_timm_model_with_a_fixed_input_side_is_refused_when_built():
    cfg = model_cfg("timm", "model.name=vit_tiny_patch16_224")
    with pytest.raises(ModelError, match="takes only 224 px inputs, not dataset.resolution=64"):
        build_model(cfg, in_chans=3, num_classes=5, resolution=64)
    assert build_model(cfg, in_chans=3, num_classes=5, resolution=224) is not None


@pytest.mark.parametrize("name", MODELS)
def test_parameter_count_is_in_the_expected_range(name):
    model = build_model(model_cfg(name), in_chans=3, num_classes=10)
    low, high = PARAMETERS[name]
    assert low <= sum(p.numel() for p in model.parameters()) <= high


@pytest.mark.parametrize("name", MODELS)
def test_trains_one_step_on_a_composed_dataset(name, tmp_path):
    from orchard_app.data.dataset import load_dataset
    from orchard_app.data.pipeline import BatchPipeline
    from orchard_app.engine.optim import build_optimizer

    side = resolutions(name)[0]
    npz = make_npz(tmp_path / "d.npz", size=side, counts=(6, 3, 3))
    cfg = compose(*run_with(npz, name), f"dataset.resolution={side}")
    validate(cfg)
    data = load_dataset(cfg.dataset, seed=0)
    model = build_model(cfg.model, data.info.in_chans, data.info.num_classes, side).train()
    x, y = BatchPipeline(data, cfg.dataset, torch.device("cpu")).train_batch(
        torch.arange(3), torch.Generator().manual_seed(0)
    )
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = build_optimizer(model, cfg.optimizer)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()

    assert torch.isfinite(loss)
    assert [n for n, p in model.named_parameters() if p.grad is None] == []  # all in the graph
    moved = [not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True)]
    assert moved[0] and moved[-1]  # the stem and the new head both learn
    # (not every tensor moves on step one: zero-initialised residual branches pass no gradient)


# --- dropout and drop-path ------------------------------------------------------------------


def differs_between_two_training_passes(name: str, *overrides: str) -> bool:
    """Same input twice in train mode: only dropout-like randomness can tell the outputs apart."""
    torch.manual_seed(0)
    model = build_model(model_cfg(name, *overrides), in_chans=3, num_classes=5).train()
    # as after training: a residual branch whose BN scale starts at zero would hide drop-path
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    x = images(3, resolutions(name)[0])
    with torch.no_grad():
        return not torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", MODELS)
def test_model_dropout_acts(name):
    assert differs_between_two_training_passes(name, "model.dropout=0.5", "model.drop_path=0")
    assert not differs_between_two_training_passes(name, "model.dropout=0", "model.drop_path=0")


@pytest.mark.parametrize("name", [m for m in MODELS if model_cfg(m).arch == "timm"])
def test_model_drop_path_acts_on_timm_models(name):
    assert differs_between_two_training_passes(name, "model.dropout=0", "model.drop_path=0.5")


def test_drop_path_is_refused_where_the_model_has_none():
    with pytest.raises(ConfigError, match="model.drop_path=0.1: resnet18 has no stochastic depth"):
        validate(compose("model=resnet18", "model.drop_path=0.1"))
    # a timm architecture without stochastic depth: a clear error, not a TypeError traceback
    cfg = model_cfg("timm", "model.name=vgg11", "model.drop_path=0.1")
    with pytest.raises(
        ModelError, match="vgg11 has no argument 'drop_path_rate'; set model.drop_path=0"
    ):
        build_model(cfg, in_chans=3, num_classes=5)


def test_unknown_timm_name_and_unknown_builder_argument_are_clear_errors():
    with pytest.raises(
        ModelError, match="timm has no model 'convnext_tny'; similar: .*convnext_tiny"
    ):
        build_model(model_cfg("timm", "model.name=convnext_tny"), in_chans=3, num_classes=5)
    with pytest.raises(ModelError, match=r"remove model.params.depth"):
        build_model(model_cfg("mini_cnn", "+model.params.depth=3"), in_chans=3, num_classes=5)


# --- pretrained ResNet-18: torchvision's weights from the torch hub cache ------------------------


def imagenet_like_state() -> dict[str, torch.Tensor]:
    """A torchvision ResNet-18 state dict standing in for the ImageNet file (no download here)."""
    from torchvision.models import resnet18

    torch.manual_seed(1)
    return resnet18(weights=None).state_dict()


def hub_checkpoint() -> Path:
    """Where torchvision looks for ResNet18_Weights.IMAGENET1K_V1 under $TORCH_HOME."""
    return Path(torch.hub.get_dir()) / "checkpoints" / "resnet18-f37072fd.pth"


@pytest.fixture
def filled_torch_hub() -> dict[str, torch.Tensor]:
    state = imagenet_like_state()
    path = hub_checkpoint()
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return state


def assert_body_is(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    for key in ("bn1.weight", "layer1.0.conv1.weight", "layer3.1.bn2.running_var", "layer4.1.conv2.weight"):  # fmt: skip
        torch.testing.assert_close(model.state_dict()[key], state[key], rtol=0, atol=0)


@pytest.mark.parametrize("chans", [1, 3])
def test_resnet18_adapted_reads_the_hub_cache_and_transfers_the_stem_bicubically(
    chans, filled_torch_hub, network
):
    cfg = model_cfg("resnet18_adapted", "model.pretrained=true")
    model = build_model(cfg, in_chans=chans, num_classes=7)

    source = filled_torch_hub["conv1.weight"]
    expected = F.interpolate(source, size=(3, 3), mode="bicubic")
    if chans == 1:
        expected = expected.sum(dim=1, keepdim=True)
    torch.testing.assert_close(model.conv1.weight, expected)
    assert_body_is(model, filled_torch_hub)
    assert model(images(chans, 28)).shape == (2, 7)
    assert network == []


def test_one_channel_stem_answers_a_grey_image_as_the_rgb_stem_answers_it_in_three_channels(
    filled_torch_hub,
):
    cfg = model_cfg("resnet18_adapted", "model.pretrained=true")
    grey, rgb = (build_model(cfg, in_chans=c, num_classes=2).conv1 for c in (1, 3))
    x = images(1, 28)
    with torch.no_grad():
        torch.testing.assert_close(grey(x), rgb(x.expand(-1, 3, -1, -1)))


@pytest.mark.parametrize("chans", [1, 3])
def test_resnet18_reads_the_hub_cache_with_its_7x7_stem(chans, filled_torch_hub, network):
    model = build_model(model_cfg("resnet18", "model.pretrained=true"), chans, num_classes=4)
    source = filled_torch_hub["conv1.weight"]
    expected = source.sum(dim=1, keepdim=True) if chans == 1 else source
    torch.testing.assert_close(model.conv1.weight, expected)
    assert_body_is(model, filled_torch_hub)
    assert network == []


@pytest.mark.parametrize("name", ["resnet18_adapted", "resnet18"])
def test_pretrained_resnet_with_an_empty_cache_offline_names_the_file_and_the_url(name, network):
    with pytest.raises(ModelError) as err:
        build_model(model_cfg(name, "model.pretrained=true"), in_chans=3, num_classes=2)
    text = str(err.value)
    assert str(hub_checkpoint()) in text and "is missing and could not be downloaded" in text
    assert RESNET18_URL in text and "model.pretrained=false" in text
    assert network  # it did try, and the failure was not papered over with random weights


def test_pretrained_resnet_with_a_broken_cache_file_says_so(filled_torch_hub):
    with open(hub_checkpoint(), "wb") as f:
        f.write(b"not a checkpoint")
    with pytest.raises(ModelError, match="could not be read"):
        build_model(model_cfg("resnet18", "model.pretrained=true"), in_chans=3, num_classes=2)


def test_model_weights_reads_a_local_file_instead_of_the_cache(tmp_path, network):
    state = imagenet_like_state()
    torch.save(state, tmp_path / "r18.pth")
    cfg = compose(
        "model=resnet18", "model.pretrained=true", f"model.weights={tmp_path / 'r18.pth'}"
    )
    validate(cfg)
    model = build_model(cfg.model, in_chans=3, num_classes=3)
    assert_body_is(model, state)
    torch.testing.assert_close(model.conv1.weight, state["conv1.weight"], rtol=0, atol=0)
    assert network == []


def test_model_weights_without_pretrained_or_without_the_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="model.weights=.*model.pretrained=true"):
        validate(compose("model=resnet18", f"model.weights={tmp_path}/r18.pth"))
    with pytest.raises(ConfigError, match="model.weights=.*no such file"):
        validate(
            compose("model=resnet18", "model.pretrained=true", f"model.weights={tmp_path}/r18.pth")
        )


# --- pretrained timm models: weights from the Hugging Face cache ---------------------------------


def fill_hf_cache(repo: str, state: dict[str, torch.Tensor]) -> None:
    """Lay out the Hugging Face hub cache as a download would: refs/main -> snapshot -> file."""
    from huggingface_hub import constants
    from safetensors.torch import save_file

    commit = "0" * 40
    root = Path(constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--"))
    (root / "snapshots" / commit).mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        root / "snapshots" / commit / "model.safetensors",
    )


def efficientnet_state() -> dict[str, torch.Tensor]:
    import timm

    torch.manual_seed(2)
    return timm.create_model("efficientnet_b0").state_dict()


def test_pretrained_timm_model_reads_the_hf_cache_without_network(network):
    state = efficientnet_state()
    fill_hf_cache("timm/efficientnet_b0.ra_in1k", state)
    model = build_model(model_cfg("efficientnet_b0", "model.pretrained=true"), 1, num_classes=6)

    torch.testing.assert_close(  # grey input: timm sums the RGB stem, as our ResNet does
        model.conv_stem.weight, state["conv_stem.weight"].sum(dim=1, keepdim=True)
    )
    torch.testing.assert_close(
        model.blocks[3][0].conv_pw.weight, state["blocks.3.0.conv_pw.weight"]
    )
    assert model.classifier.out_features == 6
    assert network == []


def test_pretrained_timm_model_with_an_empty_cache_names_the_weights_and_where_to_put_them(
    monkeypatch,
):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # without it: the same, after retries
    with pytest.raises(ModelError) as err:
        build_model(model_cfg("efficientnet_b0", "model.pretrained=true"), 3, num_classes=2)
    text = str(err.value)
    assert "timm/efficientnet_b0.ra_in1k" in text and "model.safetensors" in text
    assert constants.HF_HUB_CACHE in text and "model.weights=" in text
    assert (
        "https://huggingface.co/timm/efficientnet_b0.ra_in1k/resolve/main/model.safetensors" in text
    )


def test_pretrained_timm_model_reads_model_weights(tmp_path, network):
    from safetensors.torch import save_file

    state = efficientnet_state()
    save_file(state, tmp_path / "b0.safetensors")
    cfg = model_cfg(
        "efficientnet_b0", "model.pretrained=true", f"model.weights={tmp_path}/b0.safetensors"
    )
    model = build_model(cfg, in_chans=3, num_classes=2)
    torch.testing.assert_close(model.conv_stem.weight, state["conv_stem.weight"], rtol=0, atol=0)
    assert network == []


@pytest.mark.parametrize("name", ["resnet18_adapted", "efficientnet_b0"])
def test_model_weights_of_another_model_is_refused_naming_the_file(name, tmp_path):
    from safetensors.torch import save_file

    save_file({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.safetensors")
    cfg = model_cfg(name, "model.pretrained=true", f"model.weights={tmp_path}/other.safetensors")
    with pytest.raises(ModelError, match=f"{tmp_path}/other.safetensors does not hold"):
        build_model(cfg, in_chans=3, num_classes=2)


def test_pretrained_timm_model_that_has_no_weights_is_refused():
    import timm

    with_weights = {m.split(".")[0] for m in timm.list_models(pretrained=True)}
    name = next(m for m in timm.list_models() if m not in with_weights)
    with pytest.raises(ModelError, match=f"timm model '{name}' has no pretrained weights"):
        build_model(model_cfg("timm", f"model.name={name}", "model.pretrained=true"), 3, 2)


# --- end to end ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_pretrained_resnet18_adapted_trains_end_to_end_offline_from_the_hub_cache(
    tiny_npz, tmp_path, filled_torch_hub, network
):
    from orchard_app import train

    cfg = compose(*run_with(tiny_npz, "resnet18_adapted"), "model.pretrained=true")
    train(cfg, output_dir=tmp_path / "r")
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["model"]["name"] == "resnet18_adapted" and metrics["model"]["pretrained"]
    assert 11.1e6 <= metrics["model"]["parameters"] <= 11.3e6
    assert len(metrics["history"]) == 1
    assert network == []


@pytest.mark.slow
def test_cli_pretrained_offline_with_an_empty_cache_fails_with_one_clear_message(tmp_path):
    closed_proxy = "http://127.0.0.1:9"  # refuses at once, whatever network the machine has
    result = run_cli(
        "model=resnet18_adapted", "model.pretrained=true", "training.epochs=1",
        cwd=tmp_path,
        env={"TORCH_HOME": str(tmp_path / "torch"), "https_proxy": closed_proxy,
             "HTTPS_PROXY": closed_proxy, "no_proxy": "", "NO_PROXY": ""},
    )  # fmt: skip
    assert result.returncode == 1
    assert "model problem" in result.stderr and RESNET18_URL in result.stderr
    assert (
        str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in result.stderr
    )
    assert "Traceback" not in result.stderr
