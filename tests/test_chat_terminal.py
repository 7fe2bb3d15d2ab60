"""``openllm-hub chat`` on a real pseudo-terminal, keys as a person presses them (pexpect).

Line editing and history (arrow keys), Ctrl-C at the prompt (clears; twice quits), Ctrl-C
during an answer (stops it, keeps the conversation), slash commands, Ctrl-D. The model is the
example bigram model behind a throwaway plugin that paces its tokens, so that an answer lasts
long enough to be interrupted; the throwaway plugin is found through a real entry point.
"""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

UP, LEFT, CTRL_C, CTRL_D = "\x1b[A", "\x1b[D", "\x03", "\x04"
PROMPT = "> "

PLUGIN = '''
"""Throwaway test plugin: the bigram model, 20 ms per token."""
import time

from openllm_hub.plugin import Detection, DeviceSupport, Family, hookimpl
from openllm_hub_bigram.engine_numpy import BigramModel

OPENLLM_HUB_API_VERSION = 1


class SlowBigram(BigramModel):
    def _token_stream(self, prompt_ids, config):
        for token in super()._token_stream(prompt_ids, config):
            time.sleep(0.02)
            yield token


def detect(probe):
    return Detection("slowbigram", 1.0, "test") if probe.path.suffix == ".slowbigram" else None


@hookimpl
def register_families(register):
    register(Family(name="slowbigram", formats=("slowbigram",), detect=detect,
                    load=lambda req: SlowBigram(req.path, device="cpu"),
                    devices=(DeviceSupport("cpu", ("fp32",)),)))
'''


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory: pytest.TempPathFactory, bigram_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    root = tmp_path_factory.mktemp("slowplugin")
    (root / "slowbigram_plugin.py").write_text(textwrap.dedent(PLUGIN))
    dist = root / "slowbigram_plugin-0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: slowbigram-plugin\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text("[openllm_hub]\nslowbigram = slowbigram_plugin\n")
    model = root / "stories.slowbigram"
    shutil.copy(bigram_path, model)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "TERM": "xterm", "NO_COLOR": "1"}
    env.pop("OPENLLM_HUB_PLUGINS", None)
    yield model, env


def spawn(model: Path, env: dict[str, str], *extra: str) -> pexpect.spawn:
    child = pexpect.spawn(sys.executable, ["-m", "openllm_hub.cli", "chat", str(model), "--family", "slowbigram",
                                           "--template", "chatml", "--seed", "3", *extra],
                          env=env, encoding="utf-8", timeout=60, dimensions=(40, 200))
    child.expect("chatting with stories.slowbigram")
    child.expect_exact(PROMPT)
    return child


def history(child: pexpect.spawn) -> str:
    child.sendline("/history")
    child.expect_exact(PROMPT)
    return str(child.before)


def test_editing_history_and_slash_commands(slow_model: tuple[Path, dict[str, str]]) -> None:
    model, env = slow_model
    child = spawn(model, env, "-n", "5")
    child.sendline("/help")
    child.expect("/reset")
    child.expect_exact(PROMPT)
    assert "(no turns yet)" in history(child)  # /help reached no model
    child.sendline("/foo")
    child.expect("unknown command /foo; /help lists the commands")
    child.expect_exact(PROMPT)
    assert "(no turns yet)" in history(child)
    # edit a line with the arrow keys: "abc", two steps left, insert X
    child.send("abc" + LEFT + LEFT + "X\r")
    child.expect_exact(PROMPT)
    assert "user: aXbc" in history(child)
    # up-arrow walks back through this session's lines: /history, then aXbc
    child.send(UP + UP + "!\r")
    child.expect_exact(PROMPT)
    assert "user: aXbc!" in history(child)
    child.sendline("//slash")
    child.expect_exact(PROMPT)
    assert "user: /slash" in history(child)
    child.sendline("/reset")
    child.expect(r"conversation cleared \(3 turns forgotten\)")
    child.expect_exact(PROMPT)
    assert "(no turns yet)" in history(child)
    child.send(CTRL_D)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    # Ctrl-D leaves the shell's next prompt on a line of its own
    assert str(child.before).endswith("\n")


def test_ctrl_c_at_prompt_and_during_an_answer(slow_model: tuple[Path, dict[str, str]]) -> None:
    model, env = slow_model
    child = spawn(model, env, "-n", "400")
    child.send("typed but not sent")
    child.send(CTRL_C)  # clears the line, does not quit
    child.expect_exact("(Ctrl-C again or Ctrl-D to quit)")
    child.expect_exact(PROMPT)
    assert "(no turns yet)" in history(child)
    child.sendline("Tell me a story")
    child.expect(r"\S{3}")  # the answer has begun
    child.send(CTRL_C)  # stops this answer only
    child.expect_exact("[stopped]")
    child.expect_exact(PROMPT)
    shown = history(child)
    assert "user: Tell me a story" in shown and "assistant: " in shown  # the conversation is kept
    child.send(CTRL_C)
    child.expect_exact("(Ctrl-C again or Ctrl-D to quit)")
    child.send(CTRL_C)  # a second Ctrl-C in a row quits
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
