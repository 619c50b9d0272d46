"""genzoo: train, sample and compare every family of deep generative models."""

__version__ = "0.1.0"
