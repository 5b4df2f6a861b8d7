"""Kubernetes resource quantities (``500m``, ``1.5``, ``128Mi``, ``1G``) as exact numbers.

Used by the Route model to refuse worker resource requests above their
limits, which the API server would refuse later on the Deployment. Only the
forms the Route schema admits (``CPU_PATTERN``/``MEMORY_PATTERN``) are read.
Pure: no I/O.
"""

from __future__ import annotations

import re
from fractions import Fraction

_SUFFIXES = {
    "": Fraction(1),
    "m": Fraction(1, 1000),
    "k": Fraction(1000),
    "M": Fraction(1000**2),
    "G": Fraction(1000**3),
    "T": Fraction(1000**4),
    "Ki": Fraction(1024),
    "Mi": Fraction(1024**2),
    "Gi": Fraction(1024**3),
    "Ti": Fraction(1024**4),
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")


def parse_quantity(text: str) -> Fraction:
    """The value of a quantity, exactly (a Fraction, so ``0.1`` and ``100m`` compare equal)."""
    found = _QUANTITY.match(text)
    if found is None:
        raise ValueError(f"{text!r} is not a quantity")
    return Fraction(found.group(1)) * _SUFFIXES[found.group(2) or ""]
