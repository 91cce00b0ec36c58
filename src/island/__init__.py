"""The reference Island agent and fleet simulator (imports only `coordinator.protocol` of the coordinator)."""
