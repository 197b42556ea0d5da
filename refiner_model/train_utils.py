"""Training helpers named in the contract; they live in model.py (one top-down file) and are re-exported here."""

from refiner_model.model import DepthSampler, configure_optimizer, lr_at

__all__ = ["DepthSampler", "configure_optimizer", "lr_at"]
