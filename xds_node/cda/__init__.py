"""C-CDA documents: header -> XDS DocumentEntry metadata."""

from xds_node.cda.metadata import (
    FORMAT_CODES,
    CdaDefaults,
    CdaError,
    extract_metadata,
    is_cda,
    normalize_ts,
    parse_header,
)

__all__ = ["FORMAT_CODES", "CdaDefaults", "CdaError", "extract_metadata", "is_cda", "normalize_ts", "parse_header"]
