"""logit_stats kernel."""
