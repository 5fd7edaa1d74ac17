"""Training (Ray Train), evaluation, baselines and the report."""
