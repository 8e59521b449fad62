"""socketlab: the client-server socket programs of a networks course, as real tools.

Importing the package must stay cheap: `socketlab client` has a start-up budget, so this module
imports nothing beyond the version.
"""

__version__ = "0.1.0"
