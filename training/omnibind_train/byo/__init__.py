"""Bring your own model: bundles built from checkpoints a user already has (``omnibind-train import``)."""
