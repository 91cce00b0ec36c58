"""Workloads ("Cargos"): the catalog, requirements, runtimes, trust levels and the registry."""
