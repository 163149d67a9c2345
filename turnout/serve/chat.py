"""The chat template: turnout models are base models, so chat is a plain-text convention they can be tuned on.

Each message becomes a role line and its content, and the prompt ends with an open assistant turn:

    <|system|>
    You are terse.
    <|user|>
    Hi!
    <|assistant|>

Roles: system (developer is an alias), user, assistant. The role markers are ordinary text (the tokenizer never
turns text into special ids), so a model can learn them from data. The assistant's reply ends at the model's
end-of-text token or at the next role line: CHAT_STOP ("\\n<|") is always added to a chat request's stop strings.
"""

from __future__ import annotations

from collections.abc import Sequence

ROLES = ("system", "user", "assistant")
ALIASES = {"developer": "system"}
CHAT_STOP = "\n<|"


def role_line(role: str) -> str:
    return f"<|{role}|>\n"


def render_chat(messages: Sequence[tuple[str, str]]) -> str:
    """Prompt text for (role, content) pairs, ending with the assistant's open turn. Roles must be known."""
    parts = []
    for role, content in messages:
        role = ALIASES.get(role, role)
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; use one of {', '.join(ROLES)} (or developer)")
        parts.append(role_line(role) + content + ("" if content.endswith("\n") else "\n"))
    return "".join(parts) + role_line("assistant")
