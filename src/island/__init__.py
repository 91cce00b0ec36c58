"""The reference Island: an agent speaking the official Island's wire protocol, and a fleet simulator.

It imports nothing of the coordinator but `coordinator.protocol`."""
