"""Billing: the credit ledger, charges, refunds, quotas, Island earnings and payouts."""
