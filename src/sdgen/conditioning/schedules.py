"""A1111's prompt editing and alternation: prompts that change while the picture is denoised.

- ``[from:to:when]`` reads ``from`` until step ``when``, then ``to``; ``[to:when]`` adds ``to``
  after step ``when``, ``[from::when]`` removes ``from`` then. A ``when`` below 1 is a fraction of
  the steps (``[cat:dog:0.5]`` swaps half way); groups nest.
- ``[a|b|c]`` alternates, one word a step: what A1111 calls alternating words.

A prompt becomes a schedule, ``[(end_step, text), ...]``, as A1111's ``prompt_parser`` makes it:
the text of entry k is read at every step index ``s`` (from 0) with ``s <= end_step`` of entry k
and not of an earlier one. Emphasis brackets inside are kept as written, for the emphasis parser
(``sdgen.conditioning.emphasis``) to read in each text; ``\\[`` is a literal bracket. A prompt
this grammar cannot read (an unbalanced ``[``, a ``|`` outside brackets) is one text for all
steps, as in A1111. Prompts are read this way where A1111's syntax is (an ``emphasis`` mode
other than ``off``).
"""

from __future__ import annotations

from dataclasses import dataclass

Schedule = list[tuple[int, str]]  # (last step index it is read at, text), steps ascending


@dataclass(frozen=True)
class _Edit:
    before: tuple  # nodes; () for [to:when]
    after: tuple
    when: float


@dataclass(frozen=True)
class _Alternate:
    options: tuple[tuple, ...]


class _Unreadable(Exception):
    """The prompt is not in the schedule grammar: it is read as one text."""


_NUMBER_CHARS = set("+-.0123456789eE")


class _Parser:
    """Recursive descent over the prompt: a sequence of text, ``(...)``/``[...]`` emphasis
    groups kept as text, edits and alternations."""

    def __init__(self, text: str):
        self.text, self.at = text, 0

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
                try:
                    nodes.append(self.square() if char == "[" else self.round())
                except _Unreadable:
                    if not top:
                        raise
                    self.at = start + 1  # the bracket is text at the top level
                    nodes.append(char)
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

    def _when(self) -> float | None:
        """The number and ``]`` that end an edit, consumed; None (nothing consumed) if the
        text here is not one."""
        end = self.at
        while end < len(self.text) and self.text[end].isspace():
            end += 1
        start = end
        while end < len(self.text) and self.text[end] in _NUMBER_CHARS:
            end += 1
        if end >= len(self.text) or self.text[end] != "]" or start == end:
            return None
        try:
            value = float(self.text[start:end])
        except ValueError:
            return None
        self.at = end + 1
        return value


def prompt_schedule(text: str, steps: int) -> Schedule:
    """``text`` as a schedule over ``steps`` steps: [(end_step, text)], one entry when nothing
    in it changes between steps."""
    try:
        nodes = _Parser(text).parse()
    except _Unreadable:
        return [(steps, text)]
    ends = {steps}
    _collect_ends(nodes, steps, ends)
    return [(end, _text_at(nodes, end, steps)) for end in sorted(ends)]


def _step_of(when: float, steps: int) -> int:
    """An edit's step: a fraction of the steps below 1, at most the steps."""
    if when < 1:
        when *= steps
    return min(steps, int(when))


def _collect_ends(nodes: tuple, steps: int, ends: set[int]) -> None:
    for node in nodes:
        if isinstance(node, tuple):  # an emphasis group
            _collect_ends(node, steps, ends)
        elif isinstance(node, _Edit):
            ends.add(_step_of(node.when, steps))
            _collect_ends(node.before, steps, ends)
            _collect_ends(node.after, steps, ends)
        elif isinstance(node, _Alternate):
            ends.update(range(1, steps + 1))
            for option in node.options:
                _collect_ends(option, steps, ends)


def _text_at(nodes: tuple, step: int, steps: int) -> str:
    """The text of ``nodes`` for the schedule entry that ends at ``step``."""
    parts = []
    for node in nodes:
        if isinstance(node, str):
            parts.append(node)
        elif isinstance(node, tuple):  # an emphasis group, kept with its brackets
            parts.append(_text_at(node, step, steps))
        elif isinstance(node, _Edit):
            chosen = node.before if step <= _step_of(node.when, steps) else node.after
            parts.append(_text_at(chosen, step, steps))
        else:
            option = node.options[(step - 1) % len(node.options)]
            parts.append(_text_at(option, step, steps))
    return "".join(parts)


def text_at_step(schedule: Schedule, step: int) -> str:
    """The text read at step index ``step`` (from 0): the first entry not ended before it."""
    return next((text for end, text in schedule if step <= end), schedule[-1][1])
