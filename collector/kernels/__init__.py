"""One module per table the collector writes; each registers its collector with collector.registry. A new table's
collector is a new module here: collector.catalog imports every module of this package."""
