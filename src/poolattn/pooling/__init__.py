"""Pooling designs, one file each, one registry."""

from . import eos, latent, mean, multilayer, trainable, weighted_mean  # noqa: F401  (registration)
from .base import Pooler, PoolInput, last_token, masked_mean
from .registry import POOLERS, build_pooler, register

__all__ = ["POOLERS", "PoolInput", "Pooler", "build_pooler", "last_token", "masked_mean", "register"]
