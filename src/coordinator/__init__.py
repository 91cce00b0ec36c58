"""Archipelag coordinator: the control plane of a distributed compute network."""

__version__ = "0.1.0"
