"""NATS transport: the Island protocol handlers, the status consumer and the publisher."""
