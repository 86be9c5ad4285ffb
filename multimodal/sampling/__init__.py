"""Samplers (commit policies) and the one generation loop.

Importing this package registers the policies; `create_sampler(config)` builds one from its config.
"""

from __future__ import annotations

from multimodal.sampling import (  # noqa: F401  (fill the registry)
    dilated,
    dream,
    dsm,
    entropy_bounded,
    factor,
    first_hitting,
    low_confidence,
    random_remasking,
    threshold,
)
from multimodal.sampling.base import (
    SAMPLERS,
    Sampler,
    SamplerConfig,
    SamplerError,
    SpecialIds,
    StepInfo,
    answer_sampler,
    create_sampler,
    list_samplers,
    merge_sampler,
    sampler_config_class,
)
from multimodal.sampling.generate import generate, infill
from multimodal.sampling.loop_settings import LOOP_FIELDS, LoopSettings

__all__ = [
    "LOOP_FIELDS",
    "SAMPLERS",
    "LoopSettings",
    "Sampler",
    "SamplerConfig",
    "SamplerError",
    "SpecialIds",
    "StepInfo",
    "create_sampler",
    "generate",
    "infill",
    "answer_sampler",
    "list_samplers",
    "merge_sampler",
    "sampler_config_class",
]
