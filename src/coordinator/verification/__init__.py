"""Verification (KYC): identity checks through Stripe Identity or the built-in admin-reviewed provider."""
