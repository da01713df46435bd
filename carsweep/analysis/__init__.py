"""Analysis of a finished sweep: retrain the best trial, test it once, explain its mistakes."""
