"""Design: experiments, sweeps, latency-aware search and the report."""
