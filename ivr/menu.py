"""The voice menu as data: states, their prompts, and what each key or entry leads to (§3)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class State(StrEnum):
    main_menu = "main_menu"
    account_entry = "account_entry"
    account_confirm = "account_confirm"
    method_choice = "method_choice"
    code_entry = "code_entry"
    # `*` (or silence) at the code step: a new code, the code by a call, or the operator.
    code_options = "code_options"
    secret_ready = "secret_ready"
    call_arranged = "call_arranged"
    operator = "operator"
    # Outside working hours, instead of a transfer: the hours and a callback request offer.
    after_hours = "after_hours"
    # Nobody took the transfer: a callback request is offered (entered by the transfer's result).
    callback_offer = "callback_offer"
    callback_done = "callback_done"
    goodbye = "goodbye"
    # The outbound verification call to the phone on file.
    verify_greeting = "verify_greeting"
    verify_code = "verify_code"


class Action(StrEnum):
    repeat = "repeat"
    operator = "operator"
    english = "english"
    restore_password = "restore_password"
    recover_login = "recover_login"
    confirm_account = "confirm_account"
    reenter_account = "reenter_account"
    send_sms_code = "send_sms_code"
    call_me = "call_me"
    resend_code = "resend_code"
    reveal_code = "reveal_code"
    finish = "finish"
    leave_callback = "leave_callback"
    code_options = "code_options"


class Entry(StrEnum):
    """Free-form input a state accepts besides its keys."""

    account_number = "account_number"
    code = "code"


class Final(StrEnum):
    """How a final state ends the call."""

    dial = "dial"
    hangup = "hangup"


@dataclass(frozen=True, slots=True)
class StateSpec:
    """One menu state: its prompt key, its keys, and the free-form entry it accepts."""

    prompt: str
    # The short prompt said after silence or a wrong key (never the greeting again, §3).
    reprompt: str | None = None
    keys: Mapping[str, Action] = field(default_factory=dict)
    entry: Entry | None = None
    speech: bool = False
    final: Final | None = None
    # Where silence or too many wrong inputs lead (the operator, unless the call is done).
    exhausted: State = State.operator
    # Silence moves straight on to `exhausted` (after a secret was read, silence means "done").
    silence_ends: bool = False
    # Silence moves to this state without counting as a failure (the code step: its options).
    on_silence: State | None = None
    # The key that ends a multi-digit entry at once ("" for none).
    finish_on_key: str = "#"
    # Said on the way to `exhausted` when the tries ran out (not the operator's own notice).
    exhausted_notice: str | None = None


ANY_MENU: Mapping[str, Action] = {"0": Action.operator, "*": Action.repeat}

MENU: Mapping[State, StateSpec] = {
    State.main_menu: StateSpec(
        prompt="voice.main_menu",
        reprompt="voice.main_menu_short",
        keys={
            **ANY_MENU,
            "1": Action.restore_password,
            "2": Action.recover_login,
            "9": Action.english,
        },
    ),
    State.account_entry: StateSpec(
        prompt="voice.account_entry",
        reprompt="voice.account_entry_short",
        keys=ANY_MENU,
        entry=Entry.account_number,
        speech=True,
    ),
    State.account_confirm: StateSpec(
        prompt="voice.account_confirm",
        reprompt="voice.account_confirm_short",
        keys={**ANY_MENU, "1": Action.confirm_account, "2": Action.reenter_account},
    ),
    State.method_choice: StateSpec(
        prompt="voice.method_choice",
        reprompt="voice.method_choice_short",
        keys={**ANY_MENU, "1": Action.send_sms_code, "2": Action.call_me},
    ),
    State.code_entry: StateSpec(
        prompt="voice.code_entry",
        reprompt="voice.code_entry_short",
        # A code may start with any digit: the only option key is `*`, which ends the entry at
        # once (finishOnKey) and opens the options (§3). Twilio posts `*` alone as no digits,
        # so silence opens them too; a caller without the SMS is not sent to the operator.
        keys={"*": Action.code_options},
        entry=Entry.code,
        speech=True,
        on_silence=State.code_options,
        finish_on_key="*",
    ),
    State.code_options: StateSpec(
        prompt="voice.code_options",
        reprompt="voice.code_options_short",
        keys={
            **ANY_MENU,
            "1": Action.resend_code,
            "2": Action.call_me,
        },
    ),
    State.secret_ready: StateSpec(
        prompt="voice.secret_repeat",
        keys={**ANY_MENU, "1": Action.finish},
        exhausted=State.goodbye,
        silence_ends=True,
    ),
    State.call_arranged: StateSpec(prompt="voice.call_arranged", final=Final.hangup),
    State.operator: StateSpec(prompt="voice.operator_transfer", final=Final.dial),
    State.after_hours: StateSpec(
        prompt="voice.after_hours",
        keys={**ANY_MENU, "1": Action.leave_callback},
        exhausted=State.goodbye,
        silence_ends=True,
    ),
    State.callback_offer: StateSpec(
        prompt="voice.callback_offer",
        keys={**ANY_MENU, "1": Action.leave_callback},
        exhausted=State.goodbye,
        silence_ends=True,
    ),
    State.callback_done: StateSpec(prompt="voice.callback_accepted", final=Final.hangup),
    State.goodbye: StateSpec(prompt="voice.goodbye", final=Final.hangup),
    State.verify_greeting: StateSpec(
        prompt="voice.verify_greeting",
        # The prompt asks for 1; any key but 0 and * reveals the code all the same: a person,
        # not a voicemail box, must be listening.
        keys={**ANY_MENU, **{k: Action.reveal_code for k in "123456789#"}},
        exhausted=State.goodbye,
        # Nobody pressed a key (a voicemail box, or nobody there): the prompt written for it.
        exhausted_notice="voice.verify_no_answer",
    ),
    State.verify_code: StateSpec(
        prompt="voice.verify_code_entry",
        keys=ANY_MENU,
        entry=Entry.code,
        speech=True,
        finish_on_key="",
    ),
}

# Where each action and entry can lead: used by the flow's checks and the menu's validation test.
ACTION_TARGETS: Mapping[Action, frozenset[State]] = {
    Action.repeat: frozenset(),
    Action.operator: frozenset({State.operator}),
    Action.english: frozenset({State.main_menu}),
    Action.restore_password: frozenset({State.account_entry}),
    Action.recover_login: frozenset({State.account_entry}),
    # A caller over the start limit is transferred right after confirming (§6.4).
    Action.confirm_account: frozenset({State.method_choice, State.operator}),
    Action.reenter_account: frozenset({State.account_entry}),
    # With the SMS budget spent (§6.17), back to the methods: the call still works.
    Action.send_sms_code: frozenset({State.code_entry, State.method_choice, State.operator}),
    Action.call_me: frozenset({State.call_arranged, State.operator}),
    Action.resend_code: frozenset({State.code_entry, State.method_choice, State.operator}),
    Action.code_options: frozenset({State.code_options}),
    Action.reveal_code: frozenset({State.verify_code, State.goodbye}),
    Action.finish: frozenset({State.goodbye}),
    Action.leave_callback: frozenset({State.callback_done}),
}

ENTRY_TARGETS: Mapping[Entry, frozenset[State]] = {
    Entry.account_number: frozenset({State.account_confirm}),
    # The verification call ends with a goodbye when its code was invalidated.
    Entry.code: frozenset({State.secret_ready, State.operator, State.goodbye}),
}

# Where a webhook can start a call's menu: the incoming call, the verification call, and the
# result of a transfer nobody took (/ivr/dial-result, /ivr/queue-result).
ENTRY_STATES = (State.main_menu, State.verify_greeting, State.callback_offer)


def successors(state: State) -> frozenset[State]:
    """Every state one input away from `state`."""
    spec = MENU[state]
    if spec.final:
        return frozenset()
    targets: set[State] = {state, spec.exhausted}
    if spec.on_silence:
        targets.add(spec.on_silence)
    for action in spec.keys.values():
        targets |= ACTION_TARGETS[action]
    if spec.entry:
        targets |= ENTRY_TARGETS[spec.entry]
    if State.operator in targets:
        # Outside working hours a transfer becomes the hours and a callback offer.
        targets.add(State.after_hours)
    return frozenset(targets)
