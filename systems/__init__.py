"""tracecost: systems."""
