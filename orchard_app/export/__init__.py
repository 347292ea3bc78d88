"""Deployment export: ONNX fp32 and INT8 models that take the raw image as stored (uint8 NCHW)
with the training preprocessing inside the graph, checked against PyTorch, and benchmarked.

One job per module, composed by `orchard_app.export.pipeline` (used by `train()` with
`export.enabled=true` and by `python -m orchard_app.export <run dir or checkpoint>`):

- `graph`: the deployable module (preprocessing -> model -> probabilities)
- `onnx_export`: torch -> one self-contained .onnx file with metadata; unsupported operations named
- `session`: onnxruntime sessions with a stated number of threads
- `validate`: PyTorch vs ONNX deviation against `export.max_deviation`
- `quantize`: static INT8 (QDQ, per-channel weights) calibrated on training images
- `benchmark`: latency, median over repeated runs after warm-up

Importing this package is cheap (no torch, onnx or onnxruntime): `--help` answers at once.
"""
