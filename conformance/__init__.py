"""Conformance tooling: replay third-party test suites (NIST XDS Toolkit testkits) against the node."""
