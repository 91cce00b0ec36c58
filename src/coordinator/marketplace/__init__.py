"""Marketplace: the Cargo registry (submissions, scans, signatures, reviews, publishing, reputation)."""
