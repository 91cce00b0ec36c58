"""Karma: Island reputation from successful compute minutes, penalties and metro settings."""
