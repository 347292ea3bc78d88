"""torch -> ONNX with torch's dynamo exporter: a dynamic batch axis, a chosen opset, metadata,
and every weight inside the one .onnx file (the exporter writes a separate `.onnx.data` file
unless told otherwise). A model the exporter cannot translate is one error naming the operation.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from orchard_app.errors import ExportError

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
# Loggers that print a line per exporter step or per graph rewrite at INFO/WARNING.
_CHATTY = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript", "onnx_ir")


def export_onnx(
    module: torch.nn.Module,
    sample: torch.Tensor,
    path: Path,
    opset: int,
    metadata: dict[str, str],
    model_name: str = "the model",
) -> None:
    """Write `module` (in eval mode) to `path` as one self-contained ONNX file whose input
    `image` has a dynamic batch axis; `metadata` goes into the model's metadata_props."""
    module.eval()
    batch = torch.export.Dim("batch", min=1)
    try:
        with _quiet():
            program = torch.onnx.export(
                module, (sample,), None, dynamo=True, opset_version=int(opset),
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},), external_data=False, optimize=True, verbose=False,
            )  # fmt: skip
    except Exception as e:
        raise ExportError(unsupported_message(e, model_name)) from e
    written = program.model.opset_imports.get("", None)
    if written != int(opset):
        raise ExportError(
            f"export.opset={opset}: the exporter could write {model_name} only at opset "
            f"{written}; use export.opset={written}"
        )
    program.model.metadata_props.update({k: str(v) for k, v in metadata.items()})
    program.save(str(path), external_data=False)


def set_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Replace the metadata of an ONNX file (e.g. a quantized copy), in place."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=str(value))
    onnx.save(model, str(path))


def unsupported_operation(error: BaseException) -> str | None:
    """The operator the exporter had no ONNX translation for, e.g. `aten.cummax`, if named."""
    patterns = (
        r"No ONNX function found for <OpOverload\(op='([\w.]+)'",
        r"Error when translating node .*?target=torch\.ops\.([\w.]+)",
        r"Unsupported FX nodes: \{.*?'((?:aten|prims)\.[\w.]+)'",
        r"[Uu]nsupported operator:? '?((?:aten|prims)::?[\w.]+)",
    )
    for e in _chain(error):
        for pattern in patterns:
            found = re.search(pattern, str(e))
            if found:
                return found.group(1).removesuffix(".default")
    return None


def unsupported_message(error: BaseException, model_name: str) -> str:
    root = list(_chain(error))[-1]
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(root)).strip()  # no terminal colour codes
    why = f"{type(root).__name__}: {text.splitlines()[0][:300]}" if text else type(root).__name__
    op = unsupported_operation(error)
    what = (
        f"the operation {op} has no ONNX translation in torch {torch.__version__}'s exporter"
        if op
        else "torch could not trace it for export"
    )
    return (
        f"{model_name} cannot be exported to ONNX: {what} ({why}).\n"
        "  Pick a model without it (model=...), or train without export (export.enabled=false)."
    )


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


@contextlib.contextmanager
def _quiet():
    """The exporter reports each step and graph rewrite; only its errors matter here."""
    loggers = {name: logging.getLogger(name) for name in _CHATTY}
    levels = {name: lg.level for name, lg in loggers.items()}
    for lg in loggers.values():
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, lg in loggers.items():
            lg.setLevel(levels[name])
