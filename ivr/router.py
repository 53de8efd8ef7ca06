"""The voice webhooks: a resident's call (ivr/calls.py) and its transfer (ivr/transfers.py)."""

from __future__ import annotations

from fastapi import APIRouter

from ivr import calls, transfers

router = APIRouter()
router.include_router(calls.router)
router.include_router(transfers.router)
