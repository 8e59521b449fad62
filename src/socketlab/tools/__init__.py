"""Tools built on the transports: bench, speed, check, proxy; each a library module with a thin CLI command."""
