"""Deployment: export, on-device runtimes, latency measurement."""
