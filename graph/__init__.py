"""tracecost: graph."""
