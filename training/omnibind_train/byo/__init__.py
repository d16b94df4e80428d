"""Bring your own model: bundles built from checkpoints a user already has.

The command line is ``omnibind-train import``.
"""
