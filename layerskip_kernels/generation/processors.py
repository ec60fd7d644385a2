"""Moved to generation.sampling (decoding aids) and generation.validation
(their checks); kept for one version."""

from .sampling import DecodingAids, TokenHistory
from .validation import check_decoding_aids, check_repetition_penalty

__all__ = ["DecodingAids", "TokenHistory", "check_decoding_aids", "check_repetition_penalty"]
