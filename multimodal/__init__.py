"""mmdiff core: the shared masked-diffusion backbone, objective, samplers and training loop.

Importing the package only fills registries; nothing heavy happens at import time.
"""

from __future__ import annotations

__version__ = "0.1.0"
