"""`hybridcore.generate(model, input_ids, max_new_tokens, ...)`; the code lives in hybridcore.generation."""

from __future__ import annotations

import sys
import types

from .generation import DecodeStep, generate, sample_next_token, stream_generate

__all__ = ["generate", "stream_generate", "sample_next_token", "DecodeStep"]


class _CallableModule(types.ModuleType):
    """Once this module is imported, Python binds `hybridcore.generate` to the module itself, hiding the
    package's lazy `generate` function; calling the module calls the function, so both spellings work."""

    def __call__(self, *args, **kwargs):
        return generate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
