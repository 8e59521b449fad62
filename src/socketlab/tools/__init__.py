"""Tools built on the transports (bench, speed, check, proxy): library modules behind thin CLI commands."""
