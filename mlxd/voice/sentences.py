"""Tokens into sentences, so that each sentence can be spoken as soon as it is complete.

A sentence ends at terminal punctuation (closing quotes and brackets included) followed by whitespace, or at a
line break; the whitespace is needed because "3.14" and "e.g." mid-word are not ends. A sentence that runs
past `max_chars` is cut at its last space, so that one long sentence cannot hold speech back indefinitely.
"""

from __future__ import annotations

import re

MAX_SENTENCE_CHARS = 240
_END = re.compile(r"[.!?…]+[\"')\]”’]*\s+|\n+")


class SentenceSplitter:
    def __init__(self, max_chars: int = MAX_SENTENCE_CHARS) -> None:
        self.max_chars = max_chars
        self._text = ""

    def add(self, text: str) -> list[str]:
        """More of the answer; the sentences it completes, whitespace and all (joined, they are the text)."""
        self._text += text
        sentences: list[str] = []
        while True:
            match = _END.search(self._text)
            if match is not None and match.end() <= self.max_chars:
                sentences.append(self._text[:match.end()])
                self._text = self._text[match.end():]
            elif len(self._text) > self.max_chars:
                cut = self._text.rfind(" ", 0, self.max_chars) + 1 or self.max_chars
                sentences.append(self._text[:cut])
                self._text = self._text[cut:]
            else:
                break
        return sentences

    def flush(self) -> str:
        """The end of the answer: whatever is left, as the last sentence."""
        rest, self._text = self._text, ""
        return rest
