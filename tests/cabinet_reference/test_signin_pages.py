"""The residents' sign-in pages through HTTP: a temporary password forces the change form."""

from __future__ import annotations

import re
from datetime import timedelta

import httpx

from tests.cabinet_reference.conftest import (
    DISABLED,
    INITIAL_PASSWORD,
    KNOWN,
    Cabinet,
    password_body,
)

TEMPORARY = "k7mz2p9rbt"
LABELS = {
    "/login": ("account_number", "password"),
    "/change-password": ("new_password", "new_password_repeat"),
}


def csrf_token(page: httpx.Response) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found is not None, page.text
    return found.group(1)


async def sign_in(browser: httpx.AsyncClient, account: str, password: str) -> httpx.Response:
    form = await browser.get("/login")
    return await browser.post(
        "/login",
        data={"account_number": account, "password": password, "csrf_token": csrf_token(form)},
    )


async def change_password(
    browser: httpx.AsyncClient, new: str, repeated: str | None = None
) -> httpx.Response:
    form = await browser.get("/change-password")
    assert form.status_code == 200, form.text
    return await browser.post(
        "/change-password",
        data={
            "new_password": new,
            "new_password_repeat": new if repeated is None else repeated,
            "csrf_token": csrf_token(form),
        },
    )


async def test_login_page_has_stable_labelled_fields(cabinet: Cabinet) -> None:
    page = await cabinet.raw.get("/login")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    for field in LABELS["/login"]:
        assert f'<label for="{field}">' in page.text
        assert f'id="{field}"' in page.text
    assert "Вход в личный кабинет" in page.text
    assert "<script" not in page.text


async def test_temporary_password_forces_the_change_form_then_shows_the_cabinet(
    cabinet: Cabinet,
) -> None:
    assert (await cabinet.put_password(body=password_body(password=TEMPORARY))).status_code == 204
    browser = cabinet.raw

    signed_in = await sign_in(browser, KNOWN, TEMPORARY)
    assert signed_in.status_code == 303
    assert signed_in.headers["location"] == "/change-password"

    # Nowhere else to go until the password is changed.
    detour = await browser.get("/cabinet")
    assert detour.status_code == 303
    assert detour.headers["location"] == "/change-password"
    form = await browser.get("/change-password")
    assert 'id="must-change"' in form.text
    for field in LABELS["/change-password"]:
        assert f'<label for="{field}">' in form.text

    changed = await change_password(browser, "my-own-password")
    assert changed.status_code == 303
    assert changed.headers["location"].startswith("/cabinet")

    page = await browser.get(changed.headers["location"])
    assert page.status_code == 200
    assert "Личный кабинет" in page.text
    assert KNOWN in page.text
    assert "petrov.as" in page.text

    browser.cookies.clear()
    again = await sign_in(browser, KNOWN, "my-own-password")
    assert again.status_code == 303
    assert again.headers["location"] == "/cabinet"


async def test_the_temporary_password_is_single_use(cabinet: Cabinet) -> None:
    await cabinet.put_password(body=password_body(password=TEMPORARY))
    first = await sign_in(cabinet.raw, KNOWN, TEMPORARY)
    assert first.headers["location"] == "/change-password"

    cabinet.raw.cookies.clear()
    second = await sign_in(cabinet.raw, KNOWN, TEMPORARY)
    assert second.status_code == 401
    assert "Неверный номер лицевого счёта или пароль" in second.text


async def test_an_expired_temporary_password_is_refused(cabinet: Cabinet) -> None:
    await cabinet.put_password(body=password_body(password=TEMPORARY))
    cabinet.clock.advance(timedelta(hours=1))  # expires_at is 01:00, the clock 00:00
    refused = await sign_in(cabinet.raw, KNOWN, TEMPORARY)
    assert refused.status_code == 401
    assert "Срок действия временного пароля истёк" in refused.text
    assert "cabinet_session" not in refused.cookies


async def test_the_old_password_stops_working_after_a_put(cabinet: Cabinet) -> None:
    before = await sign_in(cabinet.raw, KNOWN, INITIAL_PASSWORD)
    assert before.headers["location"] == "/cabinet"
    assert (await cabinet.raw.get("/cabinet")).status_code == 200

    await cabinet.put_password(body=password_body(password=TEMPORARY))

    ended = await cabinet.raw.get("/cabinet")
    assert ended.status_code == 303
    assert ended.headers["location"] == "/login"
    cabinet.raw.cookies.clear()
    assert (await sign_in(cabinet.raw, KNOWN, INITIAL_PASSWORD)).status_code == 401


async def test_mismatched_or_short_new_passwords_are_refused(cabinet: Cabinet) -> None:
    await cabinet.put_password(body=password_body(password=TEMPORARY))
    await sign_in(cabinet.raw, KNOWN, TEMPORARY)

    mismatch = await change_password(cabinet.raw, "my-own-password", "my-own-passwort")
    assert mismatch.status_code == 422
    assert "Пароли не совпадают" in mismatch.text
    short = await change_password(cabinet.raw, "short1")
    assert short.status_code == 422
    assert "не короче 8 символов" in short.text

    assert (await cabinet.raw.get("/cabinet")).headers["location"] == "/change-password"
    assert (await change_password(cabinet.raw, "long-enough")).status_code == 303


async def test_change_is_refused_once_a_new_temporary_password_ended_the_session(
    cabinet: Cabinet,
) -> None:
    await cabinet.put_password(body=password_body(password=TEMPORARY))
    await sign_in(cabinet.raw, KNOWN, TEMPORARY)
    form = await cabinet.raw.get("/change-password")
    await cabinet.put_password(body=password_body(reference="r-2", password="n3wt3mpp4ss"))

    late = await cabinet.raw.post(
        "/change-password",
        data={
            "new_password": "my-own-password",
            "new_password_repeat": "my-own-password",
            "csrf_token": csrf_token(form),
        },
    )
    assert late.headers["location"] == "/login"
    cabinet.raw.cookies.clear()
    assert (await sign_in(cabinet.raw, KNOWN, "n3wt3mpp4ss")).status_code == 303


async def test_wrong_password_unknown_and_disabled_accounts_read_the_same(
    cabinet: Cabinet,
) -> None:
    answers = [
        await sign_in(cabinet.raw, KNOWN, "wrong-password"),
        await sign_in(cabinet.raw, "1999999999", INITIAL_PASSWORD),
        await sign_in(cabinet.raw, DISABLED, INITIAL_PASSWORD),
    ]
    assert {answer.status_code for answer in answers} == {401}
    errors = {re.search(r'id="error">([^<]*)<', answer.text).group(1) for answer in answers}  # type: ignore[union-attr]
    assert errors == {"Неверный номер лицевого счёта или пароль."}


async def test_a_post_without_the_csrf_token_is_refused(cabinet: Cabinet) -> None:
    await cabinet.raw.get("/login")
    refused = await cabinet.raw.post(
        "/login",
        data={"account_number": KNOWN, "password": INITIAL_PASSWORD, "csrf_token": "forged"},
    )
    assert refused.status_code == 403
    assert "cabinet_session" not in refused.cookies

    fresh = httpx.AsyncClient(transport=httpx.ASGITransport(app=cabinet.app), base_url="http://x")
    async with fresh:
        no_cookie = await fresh.post(
            "/login",
            data={"account_number": KNOWN, "password": INITIAL_PASSWORD, "csrf_token": "x"},
        )
    assert no_cookie.status_code == 403


async def test_pages_forbid_scripts_framing_and_caching(cabinet: Cabinet) -> None:
    await sign_in(cabinet.raw, KNOWN, INITIAL_PASSWORD)
    for path in ("/login", "/cabinet"):
        page = await cabinet.raw.get(path)
        assert page.status_code == 200
        policy = page.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["cache-control"] == "no-store"


async def test_cookies_are_httponly_and_samesite(cabinet: Cabinet) -> None:
    form = await cabinet.raw.get("/login")
    assert "httponly" in form.headers["set-cookie"].lower()
    assert "samesite=strict" in form.headers["set-cookie"].lower()
    signed_in = await sign_in(cabinet.raw, KNOWN, INITIAL_PASSWORD)
    session_cookies = [
        value
        for value in signed_in.headers.get_list("set-cookie")
        if value.startswith("cabinet_session=")
    ]
    assert len(session_cookies) == 1
    assert "httponly" in session_cookies[0].lower()
    assert "samesite=strict" in session_cookies[0].lower()


async def test_sign_out_ends_the_session(cabinet: Cabinet) -> None:
    await sign_in(cabinet.raw, KNOWN, INITIAL_PASSWORD)
    page = await cabinet.raw.get("/cabinet")
    out = await cabinet.raw.post("/logout", data={"csrf_token": csrf_token(page)})
    assert out.headers["location"] == "/login"
    assert (await cabinet.raw.get("/cabinet")).headers["location"] == "/login"


async def test_home_sends_each_visitor_where_they_belong(cabinet: Cabinet) -> None:
    assert (await cabinet.raw.get("/")).headers["location"] == "/login"
    await sign_in(cabinet.raw, KNOWN, INITIAL_PASSWORD)
    assert (await cabinet.raw.get("/")).headers["location"] == "/cabinet"
