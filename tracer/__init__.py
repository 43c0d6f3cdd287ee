"""tracecost: tracer."""
