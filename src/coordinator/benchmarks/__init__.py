"""`coordinator bench`: scenarios against embedded PostgreSQL and NATS, with same-run baselines."""
