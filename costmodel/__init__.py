"""tracecost: costmodel."""
