"""Jobs: submission, placement, dispatch, leases, retries, cancellation, batches and output."""
