"""orchard_app: Hydra-composed image-classification experiments on MedMNIST and similar data.

Importing the package is cheap on purpose (no torch): `python -m orchard_app --help` and
`--cfg job` must answer in well under a second. `orchard_app.train` (from experiment.py) is
loaded on first use.
"""

__version__ = "0.1.0"
__all__ = ["__version__", "train"]


def __getattr__(name: str):
    if name == "train":
        from orchard_app.run.train import train

        return train
    raise AttributeError(f"module 'orchard_app' has no attribute {name!r}")
