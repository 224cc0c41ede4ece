"""The upstream client's answer parser: llhttp (``httptools``) and what it found.

No I/O: :meth:`AnswerParser.feed` takes the bytes read, :meth:`AnswerParser.eof`
the end of the connection; the client (:mod:`.upstream`) reads the status, the
headers and the body pieces off the parser. One parser per request.

Why llhttp, not h11: h11 took ~20 µs to parse a head and a first chunk, llhttp
~1 µs, all on the time to first byte (issue #8), and h11 ~5 µs per later chunk.

What llhttp does and this module adds or refuses (each checked by a test):

- informational answers (1xx) are complete messages to llhttp: they are dropped
  and the next message is the answer; ``101`` (a protocol switch) is refused, and
  so is one with a body (llhttp reads a body framed on a 1xx other than 100, 102,
  103: it would pass for the answer's own);
- framing (RFC 9112 §6.3): ``Content-Length``, chunked, or (neither) the body
  ends with the connection, which only :meth:`~AnswerParser.eof` can tell (llhttp
  has no way to be told of an end of file through httptools); ``204`` and ``304``
  have no body. A ``Transfer-Encoding`` other than exactly ``chunked`` is refused,
  as h11 refused it;
- a ``HEAD`` answer cannot be parsed: llhttp would read a body its
  ``Content-Length`` announces (skipping it needs a callback's return value that
  httptools does not let us give), so the client refuses to send ``HEAD``;
- keep-alive: llhttp's verdict, taken when the head is complete (it forgets it
  once the message is); bytes after the answer (a message begun, or bytes llhttp
  refuses) make :attr:`~AnswerParser.stray` true, not an error: the answer is
  whole, only its connection is done for. llhttp skips blank lines between
  messages without a word, so a CRLF after an answer goes unnoticed;
- llhttp is strict where h11 let some things by: an answer with both
  ``Transfer-Encoding`` and ``Content-Length``, a repeated or listed
  ``Content-Length`` (``3, 3``), bare LF line ends, folded header lines, or
  control characters in a header value is refused (the forwarder makes it a 502
  and tries one other account). No server we talk to sends any of them;
- at most :data:`MAX_HEAD` bytes come before the head is complete;
- errors are ``ValueError``: messages of ours, or llhttp's reason (a short fixed
  text that quotes nothing) only if it still reads as such once cut as
  :func:`.http11.quote_free` cuts (its first quote on) and checked for plain
  words (:data:`_PLAIN`): a future llhttp that quoted the answer is caught.
"""

from __future__ import annotations

import re

import httptools

from qwen_oauth_mitm.proxy.http11 import quote_free

MAX_HEAD = 100 * 1024
"""Bytes before the head is complete (informational answers included), at most."""
_BODILESS = frozenset({204, 304})  # RFC 9110 §6.4.1
_PLAIN = re.compile(r"[A-Za-z](?:[A-Za-z0-9 ,/`:()-]|(?<=[a-z])'(?=[a-z])){0,79}")
"""What an llhttp reason passed on looks like: a line of plain words."""


class AnswerParser:
    """Feeds an answer's bytes to llhttp and collects its head and body.

    The ``on_*`` methods are llhttp's callbacks (httptools' protocol), called from
    within :meth:`feed`; the rest is read by the client between feeds.
    """

    __slots__ = (
        "_failure",
        "_fed",
        "_informational",
        "_parser",
        "_refusal",
        "_until_eof",
        "begun",
        "body",
        "complete",
        "fields",
        "head_complete",
        "keep_alive",
        "status_code",
        "stray",
    )

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._fed = 0
        self._informational = False
        self._refusal: str | None = None  # of the head: raised at once
        self._failure: str | None = None  # in the body: raised by check()
        self._until_eof = False
        self.begun = 0
        """Messages llhttp began (informational answers and stray ones included)."""
        self.status_code = 0
        self.fields: list[tuple[bytes, bytes]] = []
        """The answer's header fields as received (no trailers)."""
        self.body: list[bytes] = []
        """Body pieces not yet taken: the client empties the list."""
        self.head_complete = False
        self.complete = False
        self.keep_alive = False
        """Whether llhttp says the connection can go on after this answer."""
        self.stray = False
        """Bytes came after the answer: its connection cannot serve another."""

    # --- fed by the client ------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Parse ``data`` (not empty); ``ValueError`` if the head is malformed. A
        malformed body is held back (:meth:`check`) until the pieces before the
        fault are taken, as they would have been from a slower stream: an answer
        whose head came whole was answered, whatever its body."""
        head = not self.head_complete
        if head:
            self._fed += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._malformed("the answer switches protocols")
        except httptools.HttpParserError as e:
            self._malformed(reason(e))
        if self._refusal is not None:
            raise ValueError(self._refusal)
        if head and not self.head_complete and self._fed > MAX_HEAD:
            raise ValueError(f"the response head is over {MAX_HEAD} bytes")

    def check(self) -> None:
        """``ValueError`` if the body turned out malformed (see :meth:`feed`)."""
        if self._failure is not None:
            raise ValueError(self._failure)

    def eof(self) -> None:
        """The connection ended: that completes a body that lasts until then,
        or the answer was cut (``ValueError``)."""
        if self.complete:
            return
        if self._until_eof:
            self.complete = True
            return
        if self.head_complete:
            raise ValueError("the connection ended before the end of the body")
        raise ValueError("the connection ended in the response head")

    def _malformed(self, reason: str) -> None:
        if self.complete:  # refused bytes after the answer: not the answer's fault
            self.stray = True
        elif self.head_complete:
            self._failure = self._failure or reason
        else:
            self._refusal = self._refusal or reason  # ours, if any, is more precise

    # --- llhttp's callbacks -------------------------------------------------------

    def on_message_begin(self) -> None:
        self.begun += 1
        if self.complete:
            self.stray = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head_complete:  # not trailers
            # llhttp drops the whitespace before a value, not after (RFC 9112
            # §5: neither is part of it; h11 dropped both).
            self.fields.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        if self.complete:
            return
        parser = self._parser
        status = parser.get_status_code()
        if status < 200:
            if status == 101:
                self._refusal = "the answer switches protocols"
            elif status < 100:
                self._refusal = "invalid status code"
            self._informational = True
            return
        self.status_code = status
        self.head_complete = True
        self.keep_alive = parser.should_keep_alive()
        coded = [
            coding.strip().lower()
            for name, value in self.fields
            if name.lower() == b"transfer-encoding"
            for coding in value.split(b",")
        ]
        if coded and coded != [b"chunked"]:
            self._refusal = "the answer has an unsupported transfer coding"
        sized = coded or any(n.lower() == b"content-length" for n, _ in self.fields)
        self._until_eof = not sized and status not in _BODILESS

    def on_body(self, body: bytes) -> None:
        if self._informational:  # never the answer's: refused (see the module note)
            self._refusal = self._refusal or "an informational answer has a body"
        elif not self.complete:  # else a stray message's
            self.body.append(body)

    def on_message_complete(self) -> None:
        if self._informational:  # the answer is yet to come
            self._informational = False
            self.fields = []
        elif not self.complete:
            self.complete = True


def reason(error: Exception) -> str:
    """llhttp's reason for ``error``, if it reads as a plain phrase once cut;
    else a reason of ours (see the module docstring)."""
    if isinstance(error, httptools.HttpParserCallbackError):
        return "the parser failed"  # one of our callbacks: a bug, not the answer's
    text = str(error)  # an apostrophe inside a word ("can't") is no quote
    if not _PLAIN.fullmatch(text):
        text = quote_free(error)
    if _PLAIN.fullmatch(text) and text != type(error).__name__:
        return text
    return "llhttp refused it"
