"""Marketplace: the Cargo registry (submissions, scans, signatures, reviews, publishing, reputation).

The service is `registry.py`, the pure rules `submission_rules.py` and `trust.py`, the tables `tables.py`:
the old `service.py`/`rules.py`/`models.py` paths were the compute exchange's (now in `billing/`), and
leaving them free lets git follow those renames when branches that edit the exchange merge."""
