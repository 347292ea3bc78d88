"""orchard_app: Hydra-composed image-classification experiments on MedMNIST and similar data.

Importing the package is cheap on purpose (no torch): `python -m orchard_app --help` and
`--cfg job` must answer in well under a second. `train` is imported lazily.
"""

__version__ = "0.1.0"


def train(cfg, output_dir=None):  # noqa: ANN001, ANN201 - thin lazy wrapper
    """Run one experiment; see orchard_app.train.train."""
    from orchard_app.train import train as _train

    return _train(cfg, output_dir=output_dir)


__all__ = ["__version__", "train"]
