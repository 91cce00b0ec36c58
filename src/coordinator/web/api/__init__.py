"""Versioned REST APIs."""
