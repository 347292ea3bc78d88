"""Any architecture in timm's registry: `model=timm model.name=<timm name>`."""

from __future__ import annotations

import os

from torch import nn

from orchard_app.errors import ModelError


def build_timm(cfg, in_chans: int, num_classes: int) -> nn.Module:
    import timm

    if not timm.is_model(cfg.name):
        close = timm.list_models(f"*{cfg.name.split('_')[0]}*")[:8]
        raise ModelError(
            f"timm has no model '{cfg.name}'" + (f"; similar: {', '.join(close)}" if close else "")
        )
    kwargs = dict(cfg.params)
    if cfg.drop_path:
        kwargs["drop_path_rate"] = float(cfg.drop_path)
    try:
        return timm.create_model(
            cfg.name, pretrained=bool(cfg.pretrained), in_chans=in_chans, num_classes=num_classes,
            drop_rate=float(cfg.dropout), **kwargs,
        )  # fmt: skip
    except (OSError, RuntimeError) as e:
        if not cfg.pretrained:
            raise
        cache = os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface"))
        raise ModelError(
            f"model.pretrained=true: the weights of timm model '{cfg.name}' are not in the Hugging Face "
            f"cache ({cache}) and could not be downloaded ({type(e).__name__}: {str(e).splitlines()[0][:160]}).\n"
            f"  On a machine with internet run: python -c \"import timm; timm.create_model('{cfg.name}', pretrained=True)\"\n"
            f"  then copy its {cache} folder here (or set HF_HOME to it), or set model.pretrained=false."
        ) from None
