"""tracecost: collector."""
