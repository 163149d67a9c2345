"""The chat template: turnout models are base models, so chat is a plain-text convention they can be tuned on.

Each message becomes a role line and its content, and the prompt ends with an open assistant turn:

    <|system|>
    You are terse.
    <|user|>
    Hi!
    <|assistant|>

A message's `name` (OpenAI's participant name) opens its content as "name: " in this format, and is passed to a
model's own chat template as the message's `name`.

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


Message = tuple[str, str] | tuple[str, str, str | None]  # (role, content) or (role, content, name)


def render_chat(messages: Sequence[Message]) -> str:
    """Prompt text for (role, content[, name]) messages, ending with the assistant's open turn. Roles must be
    known."""
    parts = []
    for role, content, *name in messages:
        role = ALIASES.get(role, role)
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; use one of {', '.join(ROLES)} (or developer)")
        content = f"{name[0]}: {content}" if name and name[0] else content
        parts.append(role_line(role) + content + ("" if content.endswith("\n") else "\n"))
    return "".join(parts) + role_line("assistant")


class TemplatedChat(str):
    """Prompt text rendered by the model's own chat template: the special tokens it writes (<|im_start|>, ...)
    encode as their special ids, which text from anywhere else never does."""


def render_template(template: str, messages: Sequence[Message], bos_token: str | None,
                    eos_token: str | None) -> TemplatedChat:
    """The model's chat template (jinja, as transformers runs it: sandboxed, trim_blocks and lstrip_blocks) over
    the messages, ending with the generation prompt. A template error raises ValueError."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.globals["raise_exception"] = raise_exception
    try:
        text = env.from_string(template).render(
            messages=[_template_message(*m) for m in messages], add_generation_prompt=True,
            bos_token=bos_token or "", eos_token=eos_token or "")
    except jinja2.TemplateError as e:
        raise ValueError(f"the model's chat template failed: {e}") from None
    return TemplatedChat(text)


def _template_message(role: str, content: str, name: str | None = None) -> dict:
    """A message as chat templates read it; `name` only when given (templates test `message.name is defined`)."""
    return {"role": ALIASES.get(role, role), "content": content, **({"name": name} if name else {})}
