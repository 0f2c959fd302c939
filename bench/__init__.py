"""Benchmarks for dicomvault: synthetic data sets and receiver/ingest comparisons."""
