"""Console pages: one module each, found by name (see the docstring of :mod:`xds_node.console.app`)."""
