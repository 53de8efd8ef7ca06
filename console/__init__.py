"""The operator console, mounted by the app factory under /console/."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from console.deps import LOGIN_PATH, ConsoleForbidden, SignInRequired, templates
from console.router import router

# No inline script or style anywhere in the console: the policy can forbid both.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
)


class ConsoleSecurityHeaders:
    """Adds the console's security headers to every /console response (and nothing else)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/console"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [
                    *message.get("headers", []),
                    *(header for header in SECURITY_HEADERS if header[0] not in names),
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _sign_in_required(request: Request, exc: Exception) -> Response:
    if request.url.path.startswith("/console/queue/"):
        # The polled fragment: console.js reloads the page, which then redirects.
        return Response(status_code=401)
    return RedirectResponse(LOGIN_PATH, status_code=303)


async def _forbidden(request: Request, exc: Exception) -> Response:
    reason = exc.reason if isinstance(exc, ConsoleForbidden) else "role"
    return templates.TemplateResponse(
        request, "error.html", {"me": None, "reason": reason}, status_code=403
    )


def install_console(app: FastAPI) -> None:
    """Mount the console's pages, static files, error pages and security headers."""
    app.include_router(router)
    app.mount(
        "/console/static",
        StaticFiles(directory=Path(__file__).with_name("static")),
        name="console-static",
    )
    app.add_exception_handler(SignInRequired, _sign_in_required)
    app.add_exception_handler(ConsoleForbidden, _forbidden)
    app.add_middleware(ConsoleSecurityHeaders)


__all__ = ["install_console"]
