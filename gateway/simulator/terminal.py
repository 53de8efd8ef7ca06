"""The ear, eye and keypad of the simulated phone: a person at the terminal, or a script."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol, TextIO, TypeAlias

from rich.console import Console
from rich.markup import escape

HANGUP_ANSWERS = frozenset({"h", "hangup"})

ScriptedAnswer: TypeAlias = str | Callable[[], str | None] | None


class CallerHungUp(Exception):
    """Raised by `SimulatorIO.ask` when the simulated caller hangs up instead of answering."""


class SimulatorIO(Protocol):
    """The ear, eye and keypad of the simulated phone."""

    def say(self, text: str, language: str) -> None:
        """Let the caller hear one `<Say>`."""
        ...

    def info(self, text: str) -> None:
        """Show a stage direction such as "[transfer to +7…]"."""
        ...

    def ask(self, prompt: str) -> str | None:
        """Read keys (`123#`) or speech (`s:…`); None is silence; may raise CallerHungUp."""
        ...


class RichConsoleIO:
    """A human at the terminal: prints what the phone says, reads keys; can speak via espeak-ng."""

    def __init__(
        self,
        console: Console | None = None,
        *,
        speak: bool = False,
        stdin: TextIO | None = None,
    ) -> None:
        self._console = console if console is not None else Console(highlight=False)
        self._stdin = stdin
        self._espeak = shutil.which("espeak-ng") if speak else None

    def say(self, text: str, language: str) -> None:
        """Print the sentence and, when asked for, speak it."""
        self._console.print(f"[bold cyan]🔊 {escape(language)}[/] {escape(text)}")
        if self._espeak is not None:
            self._speak(self._espeak, text, language)

    def info(self, text: str) -> None:
        """Print a stage direction."""
        self._console.print(text, style="yellow", markup=False)

    def ask(self, prompt: str) -> str | None:
        """Read one line: keys, `s:` speech, empty for silence, `h` or end of input to hang up."""
        try:
            line = self._console.input(f"[bold green]☎ {escape(prompt)}[/] > ", stream=self._stdin)
        except EOFError:
            raise CallerHungUp from None
        if self._stdin is not None and not line:
            raise CallerHungUp
        answer = line.strip()
        if answer.lower() in HANGUP_ANSWERS:
            raise CallerHungUp
        return answer or None

    @staticmethod
    def _speak(espeak: str, text: str, language: str) -> None:
        voice = "ru" if language.lower().startswith("ru") else "en"
        # Speech is best effort: a broken or missing synthesiser must not end the call.
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(  # noqa: S603 - fixed argv; the text goes through stdin
                [espeak, "-v", voice, "--stdin"],
                input=text.encode(),
                capture_output=True,
                check=False,
                timeout=120,
            )


class ScriptedIO:
    """Answers prompts from a script and records everything; hangs up when the script runs out.

    An answer may be a callable, evaluated when the prompt comes (for a code that only arrives
    during the call).
    """

    def __init__(self, answers: Iterable[ScriptedAnswer] = ()) -> None:
        self._answers: deque[ScriptedAnswer] = deque(answers)
        self.events: list[tuple[str, str]] = []
        self.said: list[tuple[str, str]] = []
        self.infos: list[str] = []
        self.prompts: list[str] = []

    @property
    def remaining(self) -> int:
        """Answers not used yet."""
        return len(self._answers)

    def say(self, text: str, language: str) -> None:
        """Record a `<Say>` with its language."""
        self.said.append((text, language))
        self.events.append(("say", text))

    def info(self, text: str) -> None:
        """Record a stage direction."""
        self.infos.append(text)
        self.events.append(("info", text))

    def ask(self, prompt: str) -> str | None:
        """Give the next scripted answer; hang up when there is none left."""
        self.prompts.append(prompt)
        self.events.append(("ask", prompt))
        if not self._answers:
            raise CallerHungUp
        scripted = self._answers.popleft()
        answer = scripted() if callable(scripted) else scripted
        self.events.append(("answer", "(silence)" if answer is None else answer))
        return answer
