"""A1111's prompt editing and alternation: prompts that change while the picture is denoised.

- ``[from:to:when]`` reads ``from`` until step ``when``, then ``to``; ``[to:when]`` adds ``to``
  after step ``when``, ``[from::when]`` removes ``from`` then; groups nest.
- ``[a|b|c]`` alternates, one word a step: what A1111 calls alternating words.

``when`` is read as A1111 (1.6 and later, its default "new" timelines) reads it: a number
written with a decimal point is a fraction of the steps (``[cat:dog:0.5]`` swaps half way,
``1.0`` never), one without is a step (``[cat:dog:10]``). For a hires fix's second pass the
timeline goes on: a fraction from 1.0 to 2.0 falls in the second pass (``[cat:dog:1.5]`` swaps
half way through it), a step counts the first pass's steps too.

A prompt becomes a schedule, ``[(end_step, text), ...]``, as A1111's ``prompt_parser`` makes it:
the text of entry k is read at every step index ``s`` (from 0) with ``s <= end_step`` of entry k
and not of an earlier one. Emphasis brackets inside are kept as written, for the emphasis parser
(``sdgen.conditioning.emphasis``) to read in each text; ``\\[`` is a literal bracket. A prompt
this grammar cannot read (an unbalanced ``[``, a ``|`` outside brackets) is one text for all
steps, as in A1111. Prompts are read this way where A1111's syntax is (an ``emphasis`` mode
other than ``off``).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass

Schedule = list[tuple[int, str]]  # (last step index it is read at, text), steps ascending


@dataclass(frozen=True)
class _Edit:
    before: tuple  # nodes; () for [to:when]
    after: tuple
    when: str  # as written: a decimal point makes it a fraction of the steps


@dataclass(frozen=True)
class _Alternate:
    options: tuple[tuple, ...]


class _Unreadable(Exception):
    """The prompt is not in the schedule grammar: it is read as one text."""


_NUMBER_CHARS = set("+-.0123456789eE")


MAX_NESTING = 32  # groups open at once; a deeper prompt is one text (emphasis refuses it)


class _Parser:
    """Recursive descent over the prompt: a sequence of text, ``(...)``/``[...]`` emphasis
    groups kept as text, edits and alternations."""

    def __init__(self, text: str):
        self.text, self.at, self.depth = text, 0, 0

    def parse(self) -> tuple:
        nodes = self.sequence(top=True)
        if self.at != len(self.text):
            raise _Unreadable
        return nodes

    def peek(self) -> str:
        return self.text[self.at] if self.at < len(self.text) else ""

    def sequence(self, top: bool = False, stops: str = "") -> tuple:
        """Nodes up to a character of ``stops`` (not consumed). At the top level a stray
        bracket or colon that opens nothing is text, as A1111's grammar allows."""
        nodes: list = []
        while (char := self.peek()) and char not in stops:
            if char == "\\":
                nodes.append(self.text[self.at : self.at + 2])
                self.at += 2
            elif char in "[(":
                start = self.at
                if self.depth >= MAX_NESTING:
                    raise _Unreadable
                self.depth += 1
                try:
                    nodes.append(self.square() if char == "[" else self.round())
                except _Unreadable:
                    if not top:
                        raise
                    self.at = start + 1  # the bracket is text at the top level
                    nodes.append(char)
                finally:
                    self.depth -= 1
            elif char in "]):" and top:
                nodes.append(char)
                self.at += 1
            elif char in "|]):":
                raise _Unreadable  # only meaningful inside a group
            else:
                end = self.at
                while end < len(self.text) and self.text[end] not in "\\[]():|":
                    end += 1
                nodes.append(self.text[self.at : end])
                self.at = end
        return tuple(nodes)

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise _Unreadable
        self.at += 1

    def round(self) -> tuple:
        """``(words)`` or ``(words:weight)``: emphasis, kept as text."""
        self.expect("(")
        inside = self.sequence(stops=":)")
        if self.peek() == ":":
            self.at += 1
            weight = self.sequence(stops=")")
            self.expect(")")
            return ("(", *inside, ":", *weight, ")")
        self.expect(")")
        return ("(", *inside, ")")

    def square(self):
        """``[words]`` (emphasis, kept as text), an edit or an alternation."""
        self.expect("[")
        first = self.sequence(stops=":|]")
        if self.peek() == "]":
            self.at += 1
            return ("[", *first, "]")
        if self.peek() == "|":
            options = [first]
            while self.peek() == "|":
                self.at += 1
                options.append(self.sequence(stops="|]"))
            self.expect("]")
            return _Alternate(tuple(options))
        self.expect(":")
        when = self._when()
        if when is not None:  # [to:when]
            return _Edit((), first, when)
        second = self.sequence(stops=":]")
        self.expect(":")
        when = self._when()
        if when is None:
            raise _Unreadable
        return _Edit(first, second, when)

    def _when(self) -> str | None:
        """The number (whitespace around it) and ``]`` that end an edit, consumed; None
        (nothing consumed) if the text here is not one."""
        end = self.at
        while end < len(self.text) and self.text[end].isspace():
            end += 1
        start = end
        while end < len(self.text) and self.text[end] in _NUMBER_CHARS:
            end += 1
        number = self.text[start:end]
        while end < len(self.text) and self.text[end].isspace():
            end += 1
        if end >= len(self.text) or self.text[end] != "]" or not number:
            return None
        try:
            value = float(number)
        except ValueError:
            return None
        if not math.isfinite(value):  # 1e400: not a step
            return None
        self.at = end + 1
        return number


@dataclass(frozen=True)
class _Timeline:
    """Where a pass's steps lie on the prompt's timeline: ``steps`` in this pass, after
    ``before`` steps of a first pass (a hires fix's second pass), or none."""

    steps: int
    before: int | None = None

    def step_of(self, when: str) -> int:
        """An edit's last step of ``from`` in this pass (below 1: never ``from``)."""
        value = float(when)
        if "." in when:  # a fraction of the steps; 1.0-2.0 is the second pass
            value = (value - (1.0 if self.before is not None else 0.0)) * self.steps
        elif self.before is not None:
            value -= self.before
        return min(self.steps, int(value))


def prompt_schedule(text: str, steps: int, first_pass_steps: int | None = None) -> Schedule:
    """``text`` as a schedule over ``steps`` steps: [(end_step, text)], one entry when nothing
    in it changes between steps; with ``first_pass_steps``, over a hires fix's second pass of
    ``steps`` steps after a first pass of those (see the module's note)."""
    try:
        nodes = _Parser(text).parse()
    except _Unreadable:
        return [(steps, text)]
    timeline = _Timeline(steps, first_pass_steps)
    ends = {steps}
    _collect_ends(nodes, timeline, ends)
    return [(end, _text_at(nodes, end, timeline)) for end in sorted(ends)]


def _collect_ends(nodes: tuple, timeline: _Timeline, ends: set[int]) -> None:
    for node in nodes:
        if isinstance(node, tuple):  # an emphasis group
            _collect_ends(node, timeline, ends)
        elif isinstance(node, _Edit):
            if (step := timeline.step_of(node.when)) >= 1:
                ends.add(step)
            _collect_ends(node.before, timeline, ends)
            _collect_ends(node.after, timeline, ends)
        elif isinstance(node, _Alternate):
            ends.update(range(1, timeline.steps + 1))
            for option in node.options:
                _collect_ends(option, timeline, ends)


def _text_at(nodes: tuple, step: int, timeline: _Timeline) -> str:
    """The text of ``nodes`` for the schedule entry that ends at ``step``."""
    parts = []
    for node in nodes:
        if isinstance(node, str):
            parts.append(node)
        elif isinstance(node, tuple):  # an emphasis group, kept with its brackets
            parts.append(_text_at(node, step, timeline))
        elif isinstance(node, _Edit):
            chosen = node.before if step <= timeline.step_of(node.when) else node.after
            parts.append(_text_at(chosen, step, timeline))
        else:
            option = node.options[(step - 1) % len(node.options)]
            parts.append(_text_at(option, step, timeline))
    return "".join(parts)


def text_at_step(schedule: Schedule, step: int) -> str:
    """The text read at step index ``step`` (from 0): the first entry not ended before it."""
    index = bisect_left(schedule, step, key=lambda entry: entry[0])
    return schedule[min(index, len(schedule) - 1)][1]


def scheduled_texts(text: str, steps: int, hires_steps: int | None = None) -> list[str]:
    """Each text ``text``'s schedules read, once: over ``steps`` steps, twice them (a
    second-order sampler's UNet calls) and a hires fix's pass of ``hires_steps`` after them."""
    if "[" not in text:
        return [text]
    timelines = [(steps, None), (2 * steps, None)]
    if hires_steps is not None:
        timelines += [(hires_steps, steps), (2 * hires_steps, 2 * steps)]
    read = (t for timeline in timelines for _, t in prompt_schedule(text, *timeline))
    return list(dict.fromkeys(read))
