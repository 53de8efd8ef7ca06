"""A reference personal cabinet implementing the cabinet directory API (DESIGN.md §11, v1).

It stands alone on purpose: it imports nothing from the gateway, as a billing centre's own cabinet
would not, so the contract tests between the two can catch either side drifting.
"""

from cabinet_reference.app import create_app

__all__ = ["create_app"]
