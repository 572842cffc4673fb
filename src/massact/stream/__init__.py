"""Which tokens must stay in a bounded KV cache: perplexity of token-by-token decoding under cache policies."""

from massact.stream.policy import DEFAULT_POLICIES, Policy, StreamConfig, parse_policies
from massact.stream.result import StreamResult, TokenStream
from massact.stream.run import check_context, cut_stream, run

__all__ = [
    "DEFAULT_POLICIES",
    "Policy",
    "StreamConfig",
    "StreamResult",
    "TokenStream",
    "check_context",
    "cut_stream",
    "parse_policies",
    "run",
]
