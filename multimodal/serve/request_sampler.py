"""`request_sampler` turns a request's settings into its own sampler: ``max_tokens`` becomes the answer
canvas (rounded up to whole blocks; the text is cut at ``max_tokens``), ``temperature`` the Gumbel
temperature, and the extension field ``sampler`` any other field of a registered policy (``name``,
``steps``, ``threshold``, ``stop_at_eos``, ...). What every request of one batch shares (block length,
cache, attention, guidance, compile mode) is the server's and cannot be set per request.
"""

from __future__ import annotations

from typing import Any

from multimodal.config import ConfigError
from multimodal.sampling import LOOP_FIELDS, Sampler, SamplerConfig, SamplerError, answer_sampler, create_sampler
from multimodal.sources import RequestError


def request_sampler(
    default: SamplerConfig, max_tokens: int | None, temperature: float | None, extra: dict[str, Any] | None
) -> Sampler:
    """The request's own sampler (module docstring); RequestError names what is wrong."""
    try:
        return create_sampler(answer_sampler(default, max_tokens, temperature, extra, fixed=LOOP_FIELDS))
    except (ConfigError, SamplerError) as err:
        raise RequestError(str(err), "sampler") from None
