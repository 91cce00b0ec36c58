"""Accounts: users, magic links, sessions, API keys and roles."""
