"""Small shared pieces: typed configs, registries, seeding, atomic I/O, the run store."""
