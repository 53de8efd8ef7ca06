"""The supervisor's view: the desk's figures."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from console.deps import Desk, Supervisor, render

router = APIRouter(prefix="/console", include_in_schema=False)


@router.get("/supervisor", response_class=HTMLResponse)
async def supervisor_page(request: Request, session: Supervisor, desk: Desk) -> HTMLResponse:
    """Counts by status, kind and reason; waiting times; resolved today per operator."""
    return render(request, "supervisor.html", {"me": session, "stats": await desk.stats()})
