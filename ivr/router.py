"""The voice webhooks: a resident's call (ivr/calls.py) and its transfer (ivr/transfers.py).

The app includes each router itself: FastAPI matches a request through every level of routers
included into one another, and one level less is about 20 µs of a menu step's CPU.
"""

from __future__ import annotations

from fastapi import APIRouter

from ivr import calls, transfers

routers: tuple[APIRouter, ...] = (calls.router, transfers.router)
