"""Datasets: sources -> one manifest, splits, audit, decoded cache, synthetic demo data."""
