"""The interactive loop of ``openllm-hub chat``: line editing, history, slash commands, Ctrl-C that forgives.

On a terminal the prompt is read through GNU readline (Python's ``readline`` module: arrow keys edit
the line, up/down walk this session's history, nothing is written to disk). readline rather than
prompt_toolkit: it is in the standard library, and it prints the prompt and the line as plain text,
so the chat's output stays plain in terminals that do not answer prompt_toolkit's cursor queries.
Keys behave as in ollama's and llama.cpp's REPLs:

* Ctrl-C at the prompt clears the line; a second Ctrl-C in a row (or Ctrl-D) quits;
* Ctrl-C while an answer streams stops that answer and keeps the conversation;
* lines starting with ``/`` are commands (``/help`` lists them) and never reach the model;
  ``//text`` sends ``/text``.

When stdin is not a terminal (a pipe, a file) each line is one user turn and nothing is
echoed, so scripts can drive the chat.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # pragma: no cover
    from openllm_hub.core.model import Chunk, Model

COMMANDS = {
    "/help": "show this help",
    "/reset": "forget the conversation (the system prompt stays)",
    "/history": "show the conversation so far",
    "/exit": "quit (also /quit, Ctrl-D, or Ctrl-C twice at an empty prompt)",
}


@dataclass
class ChatSession:
    """One conversation: its system prompt, its turns, and how to stream an answer."""

    model: Model
    template: str
    params: dict[str, Any]
    system: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)

    def messages(self, text: str) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return [*head, *self.history, {"role": "user", "content": text}]

    def answer(self, text: str) -> Iterator[Chunk]:
        return self.model.stream_chat(self.messages(text), template=self.template, **self.params)


class Repl:
    """Reads turns, runs commands, streams answers. ``read_line`` is injectable for tests."""

    def __init__(self, session: ChatSession, *, interactive: bool, out: TextIO | None = None,
                 err: TextIO | None = None, colors: tuple[str, str, str] = ("", "", "")) -> None:
        self.session = session
        self.interactive = interactive
        # resolved now, not at import: sys.stdout may have been replaced since (pytest, redirect_stdout)
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.c_prompt, self.c_reset, self.c_out = colors
        self.read_line: Callable[[], str] = self._terminal_reader() if interactive else self._pipe_reader()

    # ---- input -----------------------------------------------------------------------------------
    def _pipe_reader(self) -> Callable[[], str]:
        def read() -> str:
            line = sys.stdin.readline()
            if not line:
                raise EOFError
            return line.rstrip("\n")

        return read

    def _terminal_reader(self) -> Callable[[], str]:
        import readline  # noqa: F401 - importing it gives input() line editing and history

        # \001..\002 tell readline that the colour codes take no room on the line
        prompt = f"\001{self.c_prompt}\002> \001{self.c_reset}\002" if self.c_prompt else "> "
        return lambda: input(prompt)

    # ---- loop ------------------------------------------------------------------------------------
    def banner(self, name: str) -> None:
        if self.interactive:
            print(f"chatting with {name} ({self.session.template} template). /help for commands; Ctrl-C stops "
                  "an answer, Ctrl-D or /exit quits.", file=self.err)

    def run(self) -> int:
        interrupted = False
        while True:
            try:
                text = self.read_line()
            except KeyboardInterrupt:
                if interrupted:
                    return 0
                interrupted = True
                print("(Ctrl-C again or Ctrl-D to quit)", file=self.err)
                continue
            except EOFError:
                if self.interactive:
                    print(file=self.err)  # leave the shell prompt on a line of its own
                return 0
            interrupted = False
            stripped = text.strip()
            if not stripped:
                continue
            if stripped.startswith("/") and not stripped.startswith("//"):
                if self.command(stripped):
                    return 0
                continue
            self.turn(text[1:] if stripped.startswith("//") else text)

    def command(self, line: str) -> bool:
        """Run one slash command; True means quit."""
        name = line.split()[0].lower()
        if name in ("/exit", "/quit", "/bye"):
            return True
        if name == "/help":
            width = max(len(c) for c in COMMANDS)
            for cmd, what in COMMANDS.items():
                print(f"  {cmd:<{width}}  {what}", file=self.err)
            print("  //text" + " " * (width - 6) + "  send text that starts with '/'", file=self.err)
        elif name == "/reset":
            n = len(self.session.history) // 2
            self.session.history.clear()
            print(f"conversation cleared ({n} turn{'s' if n != 1 else ''} forgotten)", file=self.err)
        elif name == "/history":
            for m in self.session.history:
                print(f"{m['role']}: {m['content']}", file=self.err)
            if not self.session.history:
                print("(no turns yet)", file=self.err)
        else:
            print(f"unknown command {name}; /help lists the commands (//text sends text starting with '/')",
                  file=self.err)
        return False

    def turn(self, text: str) -> None:
        answer: list[str] = []
        try:
            for chunk in self.session.answer(text):
                answer.append(chunk.text)
                if chunk.text:
                    print(f"{self.c_out}{chunk.text}{self.c_reset}", end="", file=self.out, flush=True)
        except KeyboardInterrupt:
            print(" [stopped]", end="", file=self.err, flush=True)
        print(file=self.out, flush=True)
        self.session.history += [{"role": "user", "content": text},
                                 {"role": "assistant", "content": "".join(answer).strip()}]
