"""Request bodies parsed strictly: text that is not UTF-8 is refused, never guessed.

Starlette decodes a form field it cannot read as UTF-8 as latin-1 (`b"\\xff\\xfehello"` became the
prompt "ÿþhello"), reads a urlencoded body's raw bytes as latin-1, and takes a multipart body
that stops before its closing boundary as if it were whole (the part it was in is dropped).
FastAPI turns a JSON body that is not UTF-8 into a bare 400. Every route of the gateway uses
`StrictRoute`, whose request parses bodies like Starlette but refuses those: 422 `invalid_utf8`
naming the field, 400 `malformed_request` for a truncated multipart body.
"""

from __future__ import annotations

import json
import re
from contextlib import aclosing
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi import Request
from fastapi.routing import APIRoute
from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser

from .errors import RequestRefused


def _not_utf8(what: str) -> RequestRefused:
    return RequestRefused(422, "invalid_utf8", f"{what} is not valid UTF-8")


def _no_nul(text: str, what: str) -> str:
    """Text with a NUL is refused: PostgreSQL cannot store one, and no prompt needs it."""
    if "\x00" in text:
        raise RequestRefused(422, "invalid_request", f"{what} holds a NUL character")
    return text


class _StrictMultiPart(MultiPartParser):
    _ended = False

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._current_part
        if part.file is None and len(part.data) + end - start > self.max_part_size:
            raise RequestRefused(  # a well-formed field, only too long: not a malformed body
                422,
                "field_too_large",
                f"form field {part.field_name!r} is over {self.max_part_size // 1024} KB",
            )
        super().on_part_data(data, start, end)

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None:
            what = f"form field {part.field_name!r}"
            try:
                text = bytes(part.data).decode(self._charset)  # utf-8 unless the client says
            except UnicodeDecodeError:
                raise _not_utf8(what) from None
            self.items.append((part.field_name, _no_nul(text, what)))
            return
        super().on_part_end()

    def on_end(self) -> None:
        self._ended = True

    async def parse(self) -> FormData:
        form = await super().parse()
        if not self._ended:
            await form.close()
            raise MultiPartException(
                "the multipart body ends before its closing boundary (truncated?)"
            )
        return form


class _StrictUrlencoded(FormParser):
    def on_field_end(self) -> None:
        self._current_fields += 1
        if self._current_fields > self.max_fields:
            raise MultiPartException(f"more than {self.max_fields} form fields")
        name = self._decode(self._field_name, "a form field name")
        self._items.append((name, self._decode(self._field_value, f"form field {name!r}")))

    @staticmethod
    def _decode(raw: bytes, what: str) -> str:
        try:
            text = unquote_to_bytes(bytes(raw).replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError:
            raise _not_utf8(what) from None
        return _no_nul(text, what)


_PARSERS = {
    b"multipart/form-data": _StrictMultiPart,
    b"application/x-www-form-urlencoded": _StrictUrlencoded,
}


# `"\\ud800"` is valid JSON but no UTF-8 text: a string holding it cannot be stored or sent.
_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    return False


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


class StrictRequest(Request):
    async def _get_form(
        self,
        *,
        max_files: int | float = 1000,
        max_fields: int | float = 1000,
        max_part_size: int = 1024 * 1024,
    ) -> FormData:
        content_type, _ = parse_options_header(self.headers.get("Content-Type"))
        parser = _PARSERS.get(content_type)
        if self._form is None and parser is not None:
            limits: dict[str, Any] = {"max_fields": max_fields, "max_part_size": max_part_size}
            if parser is _StrictMultiPart:
                limits["max_files"] = max_files
            try:
                async with aclosing(self.stream()) as stream:
                    self._form = await parser(self.headers, stream, **limits).parse()
            except MultiPartException as exc:
                raise RequestRefused(400, "malformed_request", exc.message) from None
        return await super()._get_form(
            max_files=max_files, max_fields=max_fields, max_part_size=max_part_size
        )

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                value = json.loads(body)
            except UnicodeDecodeError:
                raise _not_utf8("the JSON body") from None
            except RecursionError:
                raise RequestRefused(
                    400, "malformed_request", "the JSON is nested too deep"
                ) from None
            if _ESCAPED_SURROGATE.search(body) and _has_surrogate(value):
                raise _not_utf8("a string of the JSON body (a lone surrogate escape)")
            if b"\\u0000" in body and _has_nul(value):
                raise RequestRefused(422, "invalid_request", "a string of the JSON body holds NUL")
            self._json = value
        return self._json


class StrictRoute(APIRoute):
    """The route class of every router: its requests are `StrictRequest`s."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def strict(request: Request):
            return await handler(StrictRequest(request.scope, request.receive, request._send))

        return strict
