"""Any architecture in timm's registry: `model=timm model.name=<timm name>`.

conf/model/efficientnet_b0.yaml, convnext_tiny.yaml and vit_tiny.yaml are this builder with a
name. Pretrained weights are read from model.weights or from the Hugging Face cache without
touching the network when they are there; otherwise timm downloads them, and a failure becomes
one message naming the weights and where to put them. Never random weights instead.
"""

from __future__ import annotations

import difflib

from torch import nn

from orchard_app.errors import ModelError, cause
from orchard_app.models.weights import hub_cache_file, read_state_dict


def build_timm(
    cfg, in_chans: int, num_classes: int, resolution: int | None = None, exportable: bool = False
) -> nn.Module:
    import timm

    name = str(cfg.name)
    if not timm.is_model(name):
        close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=5)
        raise ModelError(
            f"timm has no model '{name}'" + (f"; similar: {', '.join(close)}" if close else "")
        )
    params = dict(cfg.params)
    _check_input_side(name, params, resolution)
    kwargs = dict(in_chans=in_chans, num_classes=num_classes, drop_rate=float(cfg.dropout))
    if exportable:  # layers ONNX export can trace (e.g. no in-place memory-efficient activations)
        kwargs["exportable"] = True
    if cfg.drop_path:
        kwargs["drop_path_rate"] = float(cfg.drop_path)
    local = None  # a weights file on disk: model.weights, or the Hugging Face cache's copy
    if cfg.pretrained:
        local = cfg.get("weights") or _cached_weights(name)
    if local:
        state = read_state_dict(local)
        expected = set(state)  # timm drops a head that does not fit, and then loads non-strictly
        kwargs["pretrained_cfg_overlay"] = {"state_dict": state}
    try:
        model = timm.create_model(name, pretrained=bool(cfg.pretrained), **kwargs, **params)
    except OSError as e:  # download failed: offline, empty cache, gated or missing repo
        if not cfg.pretrained:
            raise
        raise ModelError(_weights_unobtainable(name, e)) from e
    except RuntimeError as e:  # load_state_dict: tensors of another shape
        if not local or "state_dict" not in str(e):
            raise
        raise ModelError(
            f"{local} does not hold weights of timm model '{name}' ({cause(e, 160)})"
        ) from e
    if local:
        _check_all_loaded(model, expected, local, name)
    return model


def _check_all_loaded(model: nn.Module, keys: set[str], local: str, name: str) -> None:
    """timm loads non-strictly once it has dropped the pretrained head, so a file of another
    architecture would leave random weights in place without a word: refuse it."""
    heads = model.pretrained_cfg.get("classifier") or ()
    heads = tuple(f"{h}." for h in ((heads,) if isinstance(heads, str) else heads))
    missing = [k for k in model.state_dict() if k not in keys and not k.startswith(heads)]
    if missing:
        raise ModelError(
            f"{local} does not hold weights of timm model '{name}': {len(missing)} of its tensors "
            f"are missing (e.g. {missing[0]}); pass the weights of that very model"
        )


def _pretrained_cfg(name: str):
    from timm.models import get_pretrained_cfg

    pcfg = get_pretrained_cfg(name)
    if pcfg is None or not (pcfg.hf_hub_id or pcfg.url or pcfg.file):
        raise ModelError(
            f"timm model '{name}' has no pretrained weights; set model.pretrained=false, or pick "
            'a model that has some (python -c "import timm; print(timm.list_models(pretrained=True))")'
        )
    return pcfg


def _check_input_side(name: str, params: dict, resolution: int | None) -> None:
    """Refuse a resolution a fixed-size model (a ViT) cannot take, before a shape error does."""
    from timm.models import get_pretrained_cfg

    pcfg = get_pretrained_cfg(name)
    if resolution is None or pcfg is None or not pcfg.fixed_input_size:
        return
    if params.get("dynamic_img_size"):
        return
    side = params.get("img_size", pcfg.input_size[-1])
    side = side[-1] if isinstance(side, list | tuple) else int(side)
    if side != resolution:
        raise ModelError(
            f"timm model '{name}' takes only {side} px inputs, not dataset.resolution={resolution}; "
            f"use dataset.resolution={side}, set model.params.img_size={resolution} if the "
            "architecture allows it, or pick another model"
        )


def _hub_file(pcfg) -> tuple[str, str | None, str]:
    """(repo id, revision, file name) of a timm model's weights on the Hugging Face hub."""
    repo, _, revision = pcfg.hf_hub_id.partition("@")
    return repo, revision or None, pcfg.hf_hub_filename or "model.safetensors"


def _cached_weights(name: str) -> str | None:
    """The weights file in the Hugging Face cache, if there: timm would otherwise ask the hub for
    a newer version first, which takes half a minute of retries when offline."""
    pcfg = _pretrained_cfg(name)
    if not pcfg.hf_hub_id or pcfg.custom_load == "hf":
        return None  # a torch hub URL: timm reads the cached file without asking the network
    from huggingface_hub import try_to_load_from_cache

    repo, revision, filename = _hub_file(pcfg)
    candidates = (filename,) if pcfg.hf_hub_filename else (filename, "pytorch_model.bin")
    for candidate in candidates:
        found = try_to_load_from_cache(repo, candidate, revision=revision)
        if isinstance(found, str):
            return found
    return None


def _weights_unobtainable(name: str, error: Exception) -> str:
    pcfg = _pretrained_cfg(name)
    why = cause(error, 160)
    fetch = f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\""
    if pcfg.hf_hub_id:
        from huggingface_hub import constants, hf_hub_url

        repo, revision, filename = _hub_file(pcfg)
        return (
            f"model.pretrained=true needs the weights of timm model '{name}' (Hugging Face repo "
            f"{repo}, file {filename}), but they are not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) and could not be downloaded ({why}).\n"
            f"  Either run {fetch} on a machine with internet and copy its Hugging Face cache "
            "folder here (HF_HOME or HF_HUB_CACHE name another folder),\n"
            f"  or download {hf_hub_url(repo, filename, revision=revision)} and pass "
            f"model.weights=/path/to/{filename}, or set model.pretrained=false."
        )
    path = hub_cache_file(pcfg.url)
    return (
        f"model.pretrained=true needs the weights of timm model '{name}', but {path} is missing "
        f"and could not be downloaded ({why}).\n"
        f"  Download {pcfg.url} on a machine with internet and put it at {path} (the torch hub "
        "cache; TORCH_HOME names another folder), pass model.weights=/path/to/file, or set "
        "model.pretrained=false."
    )
