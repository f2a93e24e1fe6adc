"""The operator web console (issue 13): see :mod:`xds_node.console.app`."""
