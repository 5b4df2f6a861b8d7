"""Compatibility name for ``apx.controllers.translation``: the translator, split per kind.

Kept so that ``from apx.controllers.translate import translate`` (the CLI's
code generator, the operator's handlers and canary controller, tests and
benchmarks) keeps working; new code imports ``apx.controllers.translation``.
Nothing is defined here.
"""

from __future__ import annotations

from .translation import (
    APX_KINDS,
    HISTORY_ANNOTATION,
    WAITING_REASONS,
    TranslateResult,
    canary_revision,
    format_validation_error,
    translate,
)

__all__ = [
    "APX_KINDS",
    "HISTORY_ANNOTATION",
    "WAITING_REASONS",
    "TranslateResult",
    "canary_revision",
    "format_validation_error",
    "translate",
]
