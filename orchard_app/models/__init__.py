"""Model zoo: a registry of builders (registry.py) and the builders themselves."""

from orchard_app.models.registry import REGISTRY, build_for_data, build_model

__all__ = ["REGISTRY", "build_for_data", "build_model"]
