"""UTF-8-safe incremental detokenization and stop strings."""

from __future__ import annotations

from collections.abc import Sequence

from openllm_hub.core.streaming import IncrementalDetokenizer, StopMatcher


def byte_decode(ids: Sequence[int]) -> str:
    return bytes(ids).decode("utf-8", errors="replace")


def test_multibyte_characters_never_split() -> None:
    text = "Hi 你好 🦙! ok"
    det = IncrementalDetokenizer(byte_decode)
    pieces = [det.push(b) for b in text.encode()]
    pieces.append(det.flush())
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    # the emoji (4 bytes) appears whole, in one piece
    assert "🦙" in pieces


def test_invalid_bytes_are_not_held_forever() -> None:
    det = IncrementalDetokenizer(byte_decode)
    out = [det.push(b) for b in (0xE4, 0xBD, 0x41, 0x42, 0x43, 0x44)]
    assert "".join(out) + det.flush() == bytes([0xE4, 0xBD, 0x41, 0x42, 0x43, 0x44]).decode(errors="replace")


def test_stop_string_across_chunks() -> None:
    m = StopMatcher(["###"])
    out = [m.push(t) for t in ("Hello #", "#", "# tail")]
    assert "".join(out) == "Hello " and m.stopped


def test_partial_stop_is_released() -> None:
    m = StopMatcher(["\nUser:"])
    out = m.push("a\nUs") + m.push("e it") + m.flush()
    assert out == "a\nUse it" and not m.stopped


def test_earliest_of_several_stops() -> None:
    m = StopMatcher(["b", "abc"])
    assert m.push("xxabc") == "xx" and m.stopped  # "abc" starts before "b"
