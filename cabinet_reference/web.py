"""The residents' pages: sign in, forced password change, a small "Личный кабинет"."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from cabinet_reference.config import CabinetConfig
from cabinet_reference.signin import ChangeResult, Residents, SignInResult

SESSION_COOKIE = "cabinet_session"
CSRF_COOKIE = "cabinet_csrf"

_templates = Environment(
    loader=PackageLoader("cabinet_reference", "templates"),
    autoescape=select_autoescape(default=True),
)

# No script at all, no framing, nothing cached: the pages show account data.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}

REFUSED = "Неверный номер лицевого счёта или пароль."
EXPIRED = "Срок действия временного пароля истёк. Запросите новый пароль по телефону горячей линии."
MISMATCH = "Пароли не совпадают. Введите новый пароль дважды одинаково."
STALE_FORM = "Страница устарела. Откройте её заново и повторите."


def _residents(request: Request) -> Residents:
    residents: Residents = request.app.state.residents
    return residents


ResidentsDep = Annotated[Residents, Depends(_residents)]


def _config(request: Request) -> CabinetConfig:
    config: CabinetConfig = request.app.state.config
    return config


ConfigDep = Annotated[CabinetConfig, Depends(_config)]


def _page(
    request: Request,
    template: str,
    config: CabinetConfig,
    status_code: int = 200,
    **context: object,
) -> HTMLResponse:
    """A page with a CSRF token, setting the double-submit cookie if the browser lacks one."""
    token = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
    html = _templates.get_template(template).render(csrf_token=token, **context)
    response = HTMLResponse(html, status_code=status_code, headers=PAGE_HEADERS)
    if request.cookies.get(CSRF_COOKIE) != token:
        _set_cookie(response, CSRF_COOKIE, token, config)
    return response


def _set_cookie(response: Response, name: str, value: str, config: CabinetConfig) -> None:
    response.set_cookie(
        name,
        value,
        httponly=True,
        samesite="strict",
        secure=config.secure_cookies,
        path="/",
    )


def _csrf_ok(request: Request, submitted: str) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE)
    if not cookie:
        return False
    return secrets.compare_digest(cookie.encode(), submitted.encode())


def _redirect(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


def build_router() -> APIRouter:
    """The residents' pages at the site's root."""
    router = APIRouter()

    @router.get("/", response_model=None)
    def home(request: Request, residents: ResidentsDep) -> Response:
        """Where a visitor belongs now."""
        session = residents.session(request.cookies.get(SESSION_COOKIE))
        if session is None:
            return _redirect("/login")
        return _redirect("/change-password" if session.must_change else "/cabinet")

    @router.get("/login")
    def login_form(request: Request, config: ConfigDep) -> HTMLResponse:
        """The sign-in form."""
        return _page(
            request, "login.html", config, title="Вход в личный кабинет", account_number=""
        )

    @router.post("/login", response_model=None)
    def login(
        request: Request,
        residents: ResidentsDep,
        config: ConfigDep,
        account_number: Annotated[str, Form()] = "",
        password: Annotated[str, Form()] = "",
        csrf_token: Annotated[str, Form()] = "",
    ) -> Response:
        """Sign in; a temporary password leads straight to the change form."""
        title = "Вход в личный кабинет"
        if not _csrf_ok(request, csrf_token):
            return _page(
                request,
                "login.html",
                config,
                403,
                title=title,
                error=STALE_FORM,
                account_number=account_number,
            )
        attempt = residents.sign_in(account_number, password)
        if attempt.result in (SignInResult.refused, SignInResult.expired):
            error = EXPIRED if attempt.result is SignInResult.expired else REFUSED
            return _page(
                request,
                "login.html",
                config,
                401,
                title=title,
                error=error,
                account_number=account_number,
            )
        assert attempt.token is not None
        target = "/change-password" if attempt.result is SignInResult.must_change else "/cabinet"
        response = _redirect(target)
        _set_cookie(response, SESSION_COOKIE, attempt.token, config)
        # A new CSRF token with every new session.
        _set_cookie(response, CSRF_COOKIE, secrets.token_urlsafe(32), config)
        return response

    @router.get("/change-password", response_model=None)
    def change_form(request: Request, residents: ResidentsDep, config: ConfigDep) -> Response:
        """The change-password form (forced after a temporary password)."""
        session = residents.session(request.cookies.get(SESSION_COOKIE))
        if session is None:
            return _redirect("/login")
        return _page(
            request,
            "change_password.html",
            config,
            title="Смена пароля",
            forced=session.must_change,
            min_length=config.policy.min_length,
        )

    @router.post("/change-password", response_model=None)
    def change(
        request: Request,
        residents: ResidentsDep,
        config: ConfigDep,
        new_password: Annotated[str, Form()] = "",
        new_password_repeat: Annotated[str, Form()] = "",
        csrf_token: Annotated[str, Form()] = "",
    ) -> Response:
        """Set the resident's own password, then show the cabinet."""
        token = request.cookies.get(SESSION_COOKIE)
        session = residents.session(token)
        if session is None or token is None:
            return _redirect("/login")
        context: dict[str, object] = {
            "title": "Смена пароля",
            "forced": session.must_change,
            "min_length": config.policy.min_length,
        }
        if not _csrf_ok(request, csrf_token):
            return _page(request, "change_password.html", config, 403, error=STALE_FORM, **context)
        result, new_token = residents.change_password(token, new_password, new_password_repeat)
        if result is ChangeResult.signed_out:
            return _redirect("/login")
        if result is not ChangeResult.changed:
            error = (
                MISMATCH
                if result is ChangeResult.mismatch
                else f"Пароль должен быть не короче {config.policy.min_length} символов"
                " и без пробелов по краям."
            )
            return _page(request, "change_password.html", config, 422, error=error, **context)
        assert new_token is not None
        response = _redirect("/cabinet?changed=1")
        _set_cookie(response, SESSION_COOKIE, new_token, config)
        return response

    @router.get("/cabinet", response_model=None)
    def cabinet(request: Request, residents: ResidentsDep, config: ConfigDep) -> Response:
        """The resident's page; a change-only session is sent back to the change form."""
        session = residents.session(request.cookies.get(SESSION_COOKIE))
        if session is None:
            return _redirect("/login")
        if session.must_change:
            return _redirect("/change-password")
        account = residents.account(session.account_number)
        if account is None:
            return _redirect("/login")
        return _page(
            request,
            "cabinet.html",
            config,
            title="Личный кабинет",
            account=account,
            changed=request.query_params.get("changed") == "1",
        )

    @router.post("/logout", response_model=None)
    def logout(
        request: Request,
        residents: ResidentsDep,
        csrf_token: Annotated[str, Form()] = "",
    ) -> Response:
        """Sign out."""
        if _csrf_ok(request, csrf_token):
            residents.sign_out(request.cookies.get(SESSION_COOKIE))
        response = _redirect("/login")
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    return router
