"""`eirc-gateway prompts report`: how long each voice prompt and the happy path take to hear (§3).

Durations are espeak-ng's at its default speed (the same measure as the caller-budget test), so
the billing centre can keep prompts short when it edits voice_prompts/. Results are cached in a
file: only sentences that changed are synthesised again.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from core.models import Verification
from core.platform.crypto import Keyring
from core.platform.settings import Settings
from core.recovery.service import Purpose
from ivr.menu import State
from ivr.screens import Screens
from ivr.session import CallSession
from ivr.timing import Estimator, espeak_available
from ivr.twiml import Renderer, Screen
from voice_prompts import Catalogue, Language, load_catalogue

prompts_app = typer.Typer(help="The voice prompts: how long they take to hear.")
console = Console(highlight=False)

GREETING_BUDGET = 10.0
HAPPY_PATH_BUDGET = 65.0
DEFAULT_CACHE = Path.home() / ".cache" / "eirc-gateway" / "prompt-seconds.json"
SAMPLE_ACCOUNT = "1000000001"
SAMPLE_CODE = "407215"
SAMPLE_LOGIN = "ivanova.mv"


def sample_password(settings: Settings) -> str:
    """A fixed password from the configured alphabet (the same every run)."""
    chooser = random.Random(0)
    return "".join(
        chooser.choice(settings.temp_password_alphabet)
        for _ in range(settings.temp_password_length)
    )


def samples(
    prompts: Catalogue, screens: Screens, settings: Settings, lang: Language
) -> dict[str, object]:
    """Realistic values for every placeholder of the voice prompts."""
    return {
        "digits": prompts.digits(SAMPLE_ACCOUNT, lang),
        "code": prompts.digits(SAMPLE_CODE, lang),
        "hours": prompts.count("hours.hours", settings.temp_password_ttl_hours, lang),
        "length": prompts.count("hours.characters", settings.temp_password_length, lang),
        "seconds": prompts.seconds(settings.code_resend_cooldown_seconds, lang),
        "wait": prompts.wait(3600, lang),
        "number": prompts.group_number(0, lang),
        "characters": prompts.spell(sample_password(settings)[:5], lang),
        "position": 2,
        "count": 3,
    }


def happy_path(screens: Screens, settings: Settings, lang: Language) -> list[tuple[str, Screen]]:
    """The screens of a password recovery by SMS code, as the caller hears them."""
    keyring = Keyring(settings)
    call = CallSession(call_sid="CA" + "0" * 32, language=lang)
    steps: list[tuple[str, Screen]] = [("greeting", screens.screen(call))]
    call.purpose = Purpose.password
    for label, state, notices in (
        ("account number", State.account_entry, []),
        ("account read back", State.account_confirm, []),
        ("method choice", State.method_choice, []),
        ("code sent, code prompt", State.code_entry, ["voice.code_sent"]),
    ):
        call.state, call.notices = state, notices
        call.account = SAMPLE_ACCOUNT
        steps.append((label, screens.screen(call)))
    call.state, call.notices = State.secret_ready, []
    call.verification = Verification.verified
    call.sealed = keyring.seal(sample_password(settings))
    call.secret_by_sms = True
    steps.append(("password spoken", screens.screen(call)))
    return steps


@prompts_app.command("report")
def report(
    language: Annotated[str, typer.Option(help="ru, en or all")] = "all",
    cache: Annotated[Path, typer.Option(help="Where estimated seconds are cached")] = DEFAULT_CACHE,
) -> None:
    """Every voice prompt's estimated seconds (espeak-ng) and the happy path's total."""
    if not espeak_available():
        console.print("espeak-ng is not installed: apt-get install espeak-ng")
        raise typer.Exit(2)
    settings = Settings()
    prompts = load_catalogue()
    screens = Screens(settings=settings, keyring=Keyring(settings), prompts=prompts)
    renderer = Renderer(settings)
    estimator = Estimator(cache_file=cache, audio_dir=settings.prompt_audio_dir)
    languages = list(Language) if language == "all" else [Language(language)]
    over = False
    for lang in languages:
        table = Table(title=f"voice prompts ({lang.value}), seconds of espeak-ng speech")
        table.add_column("prompt")
        table.add_column("seconds", justify="right")
        values = samples(prompts, screens, settings, lang)
        for key in sorted(k for k in prompts.keys(lang) if k.startswith("voice.")):
            # {hours} is the desk's schedule in the after-hours prompts, else a duration.
            hours = screens.hours(lang) if key.startswith("voice.after_hours") else values["hours"]
            line = screens.sentence(key, lang, **{**values, "hours": hours})
            seconds = estimator.document_seconds(renderer.render(Screen(lines=[line])))
            table.add_row(key, f"{seconds:.1f}")
        console.print(table)
        path = Table(title=f"happy path ({lang.value}): greeting → password spoken")
        path.add_column("step")
        path.add_column("seconds", justify="right")
        total = 0.0
        for index, (label, screen) in enumerate(happy_path(screens, settings, lang)):
            seconds = estimator.document_seconds(renderer.render(screen))
            total += seconds
            path.add_row(label, f"{seconds:.1f}")
            if index == 0 and seconds > GREETING_BUDGET:
                over = True
        path.add_row("total", f"{total:.1f}")
        console.print(path)
        console.print(
            f"{lang.value}: happy path {total:.1f} s (budget {HAPPY_PATH_BUDGET:.0f} s), "
            f"greeting budget {GREETING_BUDGET:.0f} s"
        )
        over = over or total > HAPPY_PATH_BUDGET
    estimator.save()
    if over:
        console.print("Over the caller budget (DESIGN §3).")
        raise typer.Exit(1)
