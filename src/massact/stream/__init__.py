"""Which tokens must stay in a bounded KV cache: perplexity of token-by-token decoding under cache policies.

`run(loaded, cut_stream(tokenizer, text, offset, tokens), StreamConfig(cache=128)) -> StreamResult`.
"""

from massact.stream.config import StreamConfig
from massact.stream.policy import DEFAULT_POLICIES, Policy, parse_policies
from massact.stream.result import StreamResult, TokenStream
from massact.stream.run import check_context, check_offset, cut_stream, document_text, run

__all__ = [
    "DEFAULT_POLICIES",
    "Policy",
    "StreamConfig",
    "StreamResult",
    "TokenStream",
    "check_context",
    "check_offset",
    "cut_stream",
    "document_text",
    "parse_policies",
    "run",
]
