"""The error every decoder of ``apx.contracts`` raises for a record that breaks the contract.

Raised by the ``decode_*`` functions of ``route_table``, ``rule_set`` and
``pubsub_attributes``; readers in the dataplane catch it (it is a
``ValueError``) to skip one bad record without failing the others.
"""

from __future__ import annotations


class ContractError(ValueError):
    """A document does not follow the contract (missing or mistyped field, unknown value)."""
