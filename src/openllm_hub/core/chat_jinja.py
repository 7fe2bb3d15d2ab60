"""Chat templates written in Jinja2, as models ship them (GGUF ``tokenizer.chat_template``,
``chat_template`` in an HF ``tokenizer_config.json``, ``chat_template.jinja``).

Rendering follows transformers' ``apply_chat_template`` (the reference the conformance tests
compare against character for character): an ``ImmutableSandboxedEnvironment`` with
``trim_blocks`` and ``lstrip_blocks``, the ``loopcontrols`` extension and a no-op
``{% generation %}`` block; globals ``raise_exception``, ``strftime_now``, a ``dict`` that
only builds dicts and a ``namespace`` that refuses ``_``-names; the ``tojson`` filter as
``json.dumps`` (no HTML escaping, ``ensure_ascii=False``, ``indent``/``separators``/``sort_keys``);
variables ``messages``, ``tools``, ``documents``, ``add_generation_prompt`` and the special
tokens' spellings (``bos_token``, ``eos_token``, ...).

**Control tokens by id, message text as text.** A rendered template is one string; the
model's control-token spellings in it must become ids where the *template* wrote them, and
stay text where a *caller* typed them. Before rendering, every occurrence of one of the
model's special spellings in caller-supplied strings (message contents, and every string of
``tools``/``documents``/extra variables) is wrapped in two noncharacters, U+FDD0 and U+FDD1
(caller text holding either is refused). After rendering, :func:`split_rendered` cuts the
string: a wrapped spelling becomes :class:`~openllm_hub.core.chat.Text`, the rest is scanned
for the model's spellings (each a :class:`~openllm_hub.core.chat.Special`, by id), and a lone
marker (a template that split or sliced a wrapped spelling) is dropped but still ends a scan,
so text on its two sides cannot join into a control token, and the spelling it still touches
stays text. Rendering once, with the caller's
real text, keeps every template's own logic (``| trim``, ``.strip()``,
``content.split('</think>')``, ``startswith`` tests) exactly as transformers runs it.

Chosen over replacing each message by a placeholder and splitting at the placeholders (the
alternative considered): placeholders change what the template sees (``| trim`` of a message
with edge spaces, ``content.startswith(...)``, ``if content``) and so the output, and a template
that transforms content leaves no clean boundary. Limits of the chosen way, stated: only whole
spellings in caller text are protected; a control token that a template *assembles* from caller
text (``content | replace(...)``, slicing that joins text across a message edge, a message
ending with the first half of a spelling that the template's text completes) is not caught. No
published template does this; the template is the model's, not the caller's. A template test
that looks for a control-token spelling *in* a message (``'<tool_call>' in content`` where
``<tool_call>`` is a control token) sees the wrapped spelling, as with transformers'
``sanitize_control_tokens``.

**Bounded.** Templates come with downloaded models and are untrusted: the sandbox refuses
internals (``__class__``, ``__mro__``, ``__globals__``, unsafe callables); every ``for`` loop
counts against a per-render budget of iterations; the wall-clock deadline is checked at every
loop iteration, call, filter, operator and output chunk (``time.monotonic``, cheap), so a loop of
few but costly iterations stops there too. A deadline cannot interrupt one operation, so each is
bounded in size: ``range`` is capped by the sandbox (``MAX_RANGE``, 100,000); a list, tuple or
dict a template builds holds at most :data:`MAX_ITEMS` items and a string at most
:data:`MAX_VALUE_CHARS` characters (``*``, ``**``, ``+``, ``%`` and ``~`` refuse results above
the caps, every call's and filter's result is checked); the filters that work item by item in
Python (``sort``, ``list``, ``map``, ``unique``, ``groupby``, ...) refuse an input of more than
:data:`MAX_ITEMS` items or characters (sorting a string of 4 million characters would take
seconds); calls and filters refuse integer arguments above a cap (``'x'.ljust(10**9)``); the
output is capped. Each failure is a :class:`ChatTemplateError` naming the template and the
limit.
"""

from __future__ import annotations

import contextvars
import json
import re
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache, wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openllm_hub.core.chat import MODEL_TEMPLATE, ChatTemplate, Message, Piece, Special, Text
from openllm_hub.errors import InvalidParameterError

if TYPE_CHECKING:  # pragma: no cover
    import jinja2

#: Wrap control-token spellings found in caller text (Unicode noncharacters: not for interchange).
MARK_START, MARK_END = "\ufdd0", "\ufdd1"

#: Limits of one render (module constants so that deployments may tune them).
MAX_OUTPUT_CHARS = 4_000_000
MAX_VALUE_CHARS = 4_000_000
#: Items of a list/tuple/dict a template builds, and of the input of an item-by-item filter
#: (Jinja's own sandbox caps ``range`` at the same 100,000).
MAX_ITEMS = 100_000
MAX_LOOP_ITERATIONS = 2_000_000
MAX_INT_ARGUMENT = 1_000_000
RENDER_SECONDS = 10.0
MAX_TEMPLATE_CHARS = 1_000_000


class ChatTemplateError(InvalidParameterError):
    """A Jinja chat template that cannot be compiled, raised (``raise_exception``), broke a
    sandbox rule or went past a limit of time, loop iterations or size."""


# ---- the environment ---------------------------------------------------------------------------
@dataclass
class _Budget:
    deadline: float
    iterations: int = 0


_budget: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("chat_template_budget", default=None)


class _Refused(Exception):
    """A limit of the sandbox (turned into a ChatTemplateError by the renderer)."""


def _check_budget(n: int = 1) -> None:
    """Count ``n`` iterations against the render's budget and check its deadline (every time:
    one loop iteration may be costly)."""
    budget = _budget.get()
    if budget is None:
        return
    budget.iterations += n
    if budget.iterations > MAX_LOOP_ITERATIONS:
        raise _Refused(f"more than {MAX_LOOP_ITERATIONS:,} loop iterations")
    if time.monotonic() > budget.deadline:
        raise _Refused(f"rendering took longer than the limit of {RENDER_SECONDS:g} s (RENDER_SECONDS)")


def _loop_guard(iterable: Any) -> Iterator[Any]:
    """Wraps every ``for`` loop's iterable: each item counts against the render's budget."""
    for item in iterable:
        _check_budget()
        yield item


def _size_guard(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
        raise _Refused(f"a string of {len(value):,} characters (the limit is {MAX_VALUE_CHARS:,}, MAX_VALUE_CHARS)")
    if isinstance(value, (list, tuple, dict)) and len(value) > MAX_ITEMS:
        raise _Refused(f"a {type(value).__name__} of {len(value):,} items (the limit is {MAX_ITEMS:,}, MAX_ITEMS)")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4096:
        raise _Refused("an integer of more than 4096 bits")
    return value


def _check_args(args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    for a in (*args, *kwargs.values()):
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > MAX_INT_ARGUMENT:
            raise _Refused(f"an integer argument of {a} (the limit is {MAX_INT_ARGUMENT:,})")


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | str | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    """transformers' ``tojson``: plain ``json.dumps`` (Jinja's own escapes HTML characters)."""
    text = json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    _size_guard(text)
    return text


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _DictBuilder:
    """``dict`` for templates: builds dicts, exposes nothing else of the type."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    import jinja2.utils
    from jinja2.exceptions import SecurityError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    class Namespace(jinja2.utils.Namespace):
        """``namespace()`` that refuses attributes starting with ``_``."""

        def __init__(*args: Any, **kwargs: Any) -> None:  # Jinja's own signature trick (self may be a key)
            self, rest = args[0], args[1:]
            attrs = dict(*rest, **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name: object) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise SecurityError(f"a namespace attribute may not start with '_': {name!r}")

    class Generation(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` (transformers' assistant-mask marker): its body."""

        tags = {"generation"}  # noqa: RUF012 - Jinja reads the class attribute

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body).set_lineno(lineno)

    class Sandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(("*", "**", "+", "%"))

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            _check_budget(0)
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                        unit, limit, name = (("characters", MAX_VALUE_CHARS, "MAX_VALUE_CHARS") if isinstance(seq, str)
                                             else ("items", MAX_ITEMS, "MAX_ITEMS"))
                        if len(seq) * n > limit:
                            raise _Refused(f"a repetition of {len(seq) * n:,} {unit} (the limit is {limit:,}, {name})")
            if operator == "**" and isinstance(left, int) and isinstance(right, int) and (
                    abs(right) > 4096 or abs(left).bit_length() * abs(right) > 4096):
                raise _Refused(f"{left} ** {right} is too large")
            if operator == "%" and isinstance(left, str):
                widths = [int(w) for w in re.findall(r"%[-+ #0]*(\d+)", left)]
                if widths and max(widths) > MAX_INT_ARGUMENT:
                    raise _Refused(f"a format width of {max(widths)}")
            return _size_guard(super().call_binop(context, operator, left, right))

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
            _check_args(args, kwargs)
            _check_budget()
            return _size_guard(super().call(__context, __obj, *args, **kwargs))

    env = Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols])
    for name, fn in list(env.filters.items()):
        env.filters[name] = _guarded_filter(fn, name if name in _ITEMWISE_FILTERS else None)
    env.filters["tojson"] = _guarded_filter(_tojson)
    env.filters["_loop_guard"] = _loop_guard
    env.filters["_size_guard"] = _size_guard
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _DictBuilder()
    env.globals["namespace"] = Namespace
    return env


#: Jinja's filters that go through their input item by item in Python (or, ``urlize`` and
#: ``wordwrap``, character by character): their cost grows with its length, so it is capped.
_ITEMWISE_FILTERS = frozenset({"batch", "dictsort", "groupby", "join", "list", "map", "max", "min", "reject",
                               "rejectattr", "select", "selectattr", "slice", "sort", "sum", "unique", "urlize",
                               "wordwrap"})


def _guarded_filter(fn: Callable[..., Any], itemwise: str | None = None) -> Callable[..., Any]:
    """``fn`` checking the deadline, its integer arguments, the size of its result and, for the
    item-by-item filter named ``itemwise``, the length of its input. The input is the first
    argument after Jinja's context or environment (filters marked ``pass_context`` and the like)."""
    passes = getattr(fn, "jinja_pass_arg", None) is not None

    @wraps(fn)  # keeps Jinja's pass_context/pass_environment marks
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _check_budget(0)
        value, rest = (args[1], args[2:]) if passes else (args[0], args[1:])
        _check_args(rest, kwargs)
        if itemwise is not None and isinstance(value, (str, list, tuple, dict)) and len(value) > MAX_ITEMS:
            unit = "characters" if isinstance(value, str) else "items"
            raise _Refused(f"the filter {itemwise!r} on a value of {len(value):,} {unit} (the limit is "
                           f"{MAX_ITEMS:,}, MAX_ITEMS)")
        return _size_guard(fn(*args, **kwargs))

    return guarded


@lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
    """The template with every ``for`` loop's iterable and every ``~`` concatenation guarded."""
    import jinja2.nodes as n

    env = _environment()
    tree = env.parse(source)
    for loop in tree.find_all(n.For):
        loop.iter = n.Filter(loop.iter, "_loop_guard", [], [], None, None, lineno=loop.lineno)
    for concat in list(tree.find_all(n.Concat)):
        inner = n.Concat(concat.nodes, lineno=concat.lineno)
        concat.nodes = [n.Filter(inner, "_size_guard", [], [], None, None, lineno=concat.lineno)]
    return env.from_string(tree)


# ---- caller text ----------------------------------------------------------------------------------
def _spelling_pattern(spellings: Collection[str]) -> re.Pattern[str] | None:
    return _pattern_of(spellings if isinstance(spellings, frozenset) else frozenset(spellings))


@lru_cache(maxsize=16)
def _pattern_of(spellings: frozenset[str]) -> re.Pattern[str] | None:
    names = sorted((s for s in spellings if s), key=lambda s: (-len(s), s))  # longest first: a token before its prefix
    return re.compile("|".join(map(re.escape, names))) if names else None


def _mark(value: Any, pattern: re.Pattern[str] | None, where: str) -> Any:
    """``value`` with the control-token spellings in its strings wrapped in the markers."""
    if isinstance(value, str):
        if MARK_START in value or MARK_END in value:
            raise InvalidParameterError("text holds U+FDD0 or U+FDD1, Unicode noncharacters the chat template "
                                        "renderer reserves", where=where, fix="remove them from the text")
        return value if pattern is None else pattern.sub(lambda m: f"{MARK_START}{m.group()}{MARK_END}", value)
    if isinstance(value, Mapping):
        return {k: _mark(v, pattern, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_mark(v, pattern, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def split_rendered(rendered: str, spellings: Collection[str]) -> list[Piece]:
    """A string rendered from marked input as pieces: marked spellings are :class:`Text`; in the
    rest, each of ``spellings`` is a :class:`Special`. A lone marker (the template cut a marked
    spelling's other marker off) is dropped and ends a scan, and the spelling it still touches
    (after a lone start, before a lone end) is the caller's: :class:`Text`."""
    pattern = _spelling_pattern(spellings)
    out: list[Piece] = []

    def scan(text: str, after_start: bool, before_end: bool) -> None:
        head = tail = ""
        if pattern is not None and after_start and (m := pattern.match(text)):
            head, text = m.group(), text[m.end():]
        if pattern is not None and before_end:
            m = re.search(f"(?:{pattern.pattern})$", text)
            if m is not None:
                text, tail = text[:m.start()], m.group()
        if head:
            out.append(Text(head))
        pos = 0
        for m in pattern.finditer(text) if pattern is not None else ():
            if m.start() > pos:
                out.append(Text(text[pos:m.start()]))
            out.append(Special(m.group()))
            pos = m.end()
        if pos < len(text):
            out.append(Text(text[pos:]))
        if tail:
            out.append(Text(tail))

    spelled = f"{MARK_START}({pattern.pattern}){MARK_END}|" if pattern is not None else ""
    markers = re.compile(f"{spelled}[{MARK_START}{MARK_END}]")
    pos, after_start = 0, False
    for m in markers.finditer(rendered):
        lone = m.group() if m.lastindex is None else None
        scan(rendered[pos:m.start()], after_start, lone == MARK_END)
        if lone is None:
            out.append(Text(m.group(1)))
        after_start = lone == MARK_START
        pos = m.end()
    scan(rendered[pos:], after_start, False)
    return out


def check_template_metadata(metadata: Mapping[str, Any], where: str | Path) -> None:
    """Refuse a GGUF whose ``tokenizer.chat_template`` (or a named ``tokenizer.chat_template.X``)
    does not compile: llama-cpp-python compiles every one while loading and fails with a bare
    Jinja error otherwise."""
    from openllm_hub.errors import CorruptFileError

    for key, value in metadata.items():
        if key == "tokenizer.chat_template" or key.startswith("tokenizer.chat_template."):
            if isinstance(value, str) and not value.strip():
                continue  # an empty template compiles to nothing; the model just has none
            try:
                JinjaTemplate(value if isinstance(value, str) else "", name=key)
            except ChatTemplateError as exc:
                raise CorruptFileError(f"the file's {key} is not a usable Jinja template: {exc.what}", where=where,
                                       fix="fix or remove it (gguf-py's gguf_new_metadata.py --chat-template "
                                           "writes a new one), or use another file") from exc


# ---- the template ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JinjaTemplate:
    """A Jinja chat template and the special-token spellings it is rendered with.

    ``variables``: the tokenizer's special-token strings (``bos_token``, ``eos_token``,
    ``unk_token``, ``pad_token``, ...), as transformers passes its ``special_tokens_map``.
    """

    source: str
    variables: Mapping[str, str] = field(default_factory=dict)
    name: str = MODEL_TEMPLATE

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source.strip():
            raise ChatTemplateError(f"the chat template {self.name!r} is empty", where="chat_template")
        if len(self.source) > MAX_TEMPLATE_CHARS:
            raise ChatTemplateError(f"the chat template {self.name!r} is {len(self.source):,} characters (the limit "
                                    f"is {MAX_TEMPLATE_CHARS:,})", where="chat_template")
        self.compile()

    def compile(self) -> jinja2.Template:
        import jinja2

        try:
            return _compile(self.source)
        except jinja2.TemplateSyntaxError as exc:
            raise ChatTemplateError(f"the chat template {self.name!r} does not compile: {exc.message} "
                                    f"(line {exc.lineno})", where="chat_template",
                                    fix="fix the template text, or pick a named template") from exc

    def render(self, messages: Sequence[Mapping[str, Any]], *, tools: Sequence[Mapping[str, Any]] | None = None,
               documents: Sequence[Mapping[str, Any]] | None = None, add_generation_prompt: bool = False,
               **extra: Any) -> str:
        """The prompt as one string, as transformers' ``apply_chat_template(..., tokenize=False)``
        gives it (same defaults: no generation prompt unless asked). For display and comparison;
        models use :meth:`pieces`."""
        return self._render(messages, tools, documents, add_generation_prompt, extra, None)

    def pieces(self, messages: Sequence[Mapping[str, Any]], spellings: Collection[str], *,
               tools: Sequence[Mapping[str, Any]] | None = None, documents: Sequence[Mapping[str, Any]] | None = None,
               add_generation_prompt: bool = False, **extra: Any) -> list[Piece]:
        """The prompt as pieces: ``spellings`` (the model's control tokens) written by the template
        are :class:`Special`, those in caller text stay :class:`Text`."""
        pattern = _spelling_pattern(spellings)
        rendered = self._render(messages, tools, documents, add_generation_prompt, extra, pattern)
        return split_rendered(rendered, spellings)

    def chat_template(self, spellings: Collection[str]) -> ChatTemplate:
        """A :class:`ChatTemplate` (the registry's kind) laying conversations out through this one;
        the template places the prompt tokens (BOS) itself, as transformers renders it."""
        from openllm_hub.core.tool_calls import arguments_as_objects, detect_tool_format

        frozen = frozenset(spellings)

        def pieces_fn(_tpl: ChatTemplate, msgs: Sequence[Message]) -> list[Piece]:
            return self.pieces(msgs, frozen, add_generation_prompt=True)

        def tools_fn(_tpl: ChatTemplate, msgs: Sequence[Message],
                     tools: Sequence[Mapping[str, Any]] | None) -> list[Piece]:
            if tools is not None and not self.uses_tools:
                raise InvalidParameterError(f"the chat template {self.name!r} does not render tools (its text never "
                                            "uses the variable 'tools')", where="tools",
                                            fix="leave tools out, or pick a template with tool support")
            return self.pieces(arguments_as_objects(msgs), frozen, tools=tools, add_generation_prompt=True)

        return ChatTemplate(name=self.name, pieces_fn=pieces_fn, model_specials=False, tools_fn=tools_fn,
                            tool_format=detect_tool_format(self.source) if self.uses_tools else None,
                            description="the model's own Jinja chat template")

    @property
    def uses_tools(self) -> bool:
        """Whether the template reads the ``tools`` variable (renders the functions offered)."""
        import jinja2.meta

        return "tools" in jinja2.meta.find_undeclared_variables(_environment().parse(self.source))

    def _render(self, messages: Sequence[Mapping[str, Any]], tools: Any, documents: Any, add_generation_prompt: bool,
                extra: Mapping[str, Any], pattern: re.Pattern[str] | None) -> str:
        import jinja2
        from jinja2.exceptions import SecurityError

        where, tpl = "chat_template", f"chat template {self.name!r}"
        template = self.compile()
        data: dict[str, Any] = {**self.variables, **_mark(dict(extra), pattern, "chat template variables")}
        data.update(messages=_mark([dict(m) for m in messages], pattern, "messages"),
                    tools=_mark(list(tools), pattern, "tools") if tools is not None else None,
                    documents=_mark(list(documents), pattern, "documents") if documents is not None else None,
                    add_generation_prompt=bool(add_generation_prompt))
        token = _budget.set(_Budget(deadline=time.monotonic() + RENDER_SECONDS))
        out: list[str] = []
        size = 0
        try:
            for chunk in template.generate(**data):
                size += len(chunk)
                if size > MAX_OUTPUT_CHARS:
                    raise _Refused(f"more than {MAX_OUTPUT_CHARS:,} characters of output")
                out.append(chunk)
                _check_budget()
        except _Refused as exc:
            raise ChatTemplateError(f"the {tpl} went past a limit: {exc}", where=where,
                                    fix="use a named template (openllm-hub templates), or fix the template") from exc
        except SecurityError as exc:
            raise ChatTemplateError(f"the {tpl} broke a sandbox rule: {exc}", where=where,
                                    fix="use a named template; this template is not safe to run") from exc
        except jinja2.TemplateError as exc:  # raise_exception(), undefined names, bad calls
            raise ChatTemplateError(f"the {tpl} failed: {exc}", where=where,
                                    fix="check the messages' roles and order against what the model's template "
                                        "accepts, or pick a named template") from exc
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, ArithmeticError, RecursionError,
                MemoryError) as exc:
            raise ChatTemplateError(f"the {tpl} failed: {type(exc).__name__}: {exc}", where=where,
                                    fix="pick a named template (openllm-hub templates)") from exc
        finally:
            _budget.reset(token)
        return "".join(out)


__all__ = ["MARK_END", "MARK_START", "MODEL_TEMPLATE", "ChatTemplateError", "JinjaTemplate", "check_template_metadata",
           "split_rendered"]
