"""probe_step kernel."""
