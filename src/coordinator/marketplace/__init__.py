"""Marketplace: the compute exchange (asking prices, surge, clearing prices, snapshots)."""
