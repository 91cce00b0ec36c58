"""Background jobs on procrastinate (PostgreSQL-backed): the durable periodic backstop and on-demand work."""
