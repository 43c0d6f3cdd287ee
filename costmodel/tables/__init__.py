"""Measured kernel tables: where they live and which version is newer (roots), what each table holds (specs,
shared with the collector, which writes them), reading them (load) and interpolating in them (interpolate)."""
