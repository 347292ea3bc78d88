"""`python -m orchard_app.predict`: a trained run (or its model.onnx) on new images.

- `inputs`: image files, folders and .npz arrays, in batches at the model's size and channels
- `predictor`: the run's model.onnx session, or its checkpoint behind the same preprocessing
- `output`: predictions.csv (written atomically) and the short report printed at the end
Grad-CAM (`--explain`) is `orchard_app.evaluation.saliency`.
"""
