"""The operator console's pages: sign-in (auth.py), the queue and a case (cases.py), the supervisor.

Routers parse and render; the desk (core/escalations/desk.py) decides. Every page needs a signed-in
operator, every POST a valid CSRF token; the text operators read lives in the templates.
"""

from __future__ import annotations

from fastapi import APIRouter

from console import auth, cases, supervisor

router = APIRouter()
router.include_router(auth.router)
router.include_router(cases.router)
router.include_router(supervisor.router)
