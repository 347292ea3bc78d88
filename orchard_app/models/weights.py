"""Reading a pretrained-weights file from disk (model.weights, or a cached download), and saying
why a download or a read failed in one short line."""

from __future__ import annotations

from pathlib import Path

import torch

from orchard_app.errors import ModelError, cause


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A .safetensors or torch-saved state dict, loaded safely (no pickled code) on the CPU."""
    path = Path(path).expanduser()
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # anything that stops the read is the file's problem here
        raise ModelError(
            f"{path} could not be read as a state dict ({cause(e, 160)}); pass a .pth or "
            ".safetensors file of the model's weights (a broken download: delete it)"
        ) from e
    if not isinstance(state, dict):
        raise ModelError(f"{path} holds a {type(state).__name__}, not a state dict of weights")
    return state


def hub_cache_file(url: str) -> Path:
    """Where torch hub keeps (and first looks for) the file downloaded from `url`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
