"""Streaming ``multipart/form-data`` for uploads.

The ``file`` part goes straight to the staging area, hashed as it arrives and refused the
moment it passes the size limit, so a huge upload is never held in memory (nor fully on disk).
Form fields are small and capped. Framework-free: it takes any async iterator of byte chunks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from .errors import AssetError, AssetInputError, AssetTooLarge
from .files import StagedFile, StagingWriter

__all__ = ["FILE_FIELD", "FORM_FIELDS", "UploadForm", "read_upload"]

FILE_FIELD = "file"
FORM_FIELDS = ("type", "meta")
FLUSH_AT = 1024 * 1024  # write to disk (off the event loop) in chunks of about this size


@dataclass(slots=True)
class UploadForm:
    staged: StagedFile | None
    filename: str | None
    fields: dict[str, str]

    def discard(self) -> None:
        if self.staged is not None:
            self.staged.discard()


@dataclass(slots=True)
class _State:
    new_writer: Callable[[], StagingWriter]
    max_bytes: int
    max_field_bytes: int
    writer: StagingWriter | None = None
    filename: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    current: str | None = None
    buffer: bytearray = field(default_factory=bytearray)
    pending: list[bytes] = field(default_factory=list)
    pending_size: int = 0
    file_size: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    header_field: bytes = b""
    header_value: bytes = b""
    ended: bool = False

    # -- parser callbacks (run inside MultipartParser.write) ---------------------------------
    def on_part_begin(self) -> None:
        self.headers = {}
        self.current = None
        self.buffer = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_field.strip().lower()] = self.header_value.strip()
        self.header_field = self.header_value = b""

    def on_headers_finished(self) -> None:
        disposition, params = parse_options_header(self.headers.get(b"content-disposition"))
        raw_name = params.get(b"name")
        if disposition != b"form-data" or raw_name is None:
            raise AssetError("a multipart part has no 'Content-Disposition: form-data; name=...'")
        name = raw_name.decode("utf-8", "replace")
        if name == FILE_FIELD:
            if self.writer is not None:
                raise AssetInputError("only one 'file' part is allowed per upload")
            raw_filename = params.get(b"filename")
            self.filename = raw_filename.decode("utf-8", "replace") if raw_filename else None
            self.writer = self.new_writer()
        elif name in FORM_FIELDS:
            if name in self.fields:
                raise AssetInputError(f"form field {name!r} appears more than once")
        else:
            expected = ", ".join([FILE_FIELD, *FORM_FIELDS])
            raise AssetInputError(f"unknown form field {name!r}; expected {expected}")
        self.current = name

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        size = end - start
        if self.current == FILE_FIELD:
            self.file_size += size
            if self.file_size > self.max_bytes:
                raise AssetTooLarge(f"file exceeds the asset size limit of {self.max_bytes} bytes")
            self.pending.append(bytes(data[start:end]))
            self.pending_size += size
        else:
            self.buffer += data[start:end]
            if len(self.buffer) > self.max_field_bytes:
                raise AssetTooLarge(
                    f"form field {self.current!r} is larger than {self.max_field_bytes} bytes"
                )

    def on_part_end(self) -> None:
        if self.current is not None and self.current != FILE_FIELD:
            try:
                self.fields[self.current] = self.buffer.decode("utf-8")
            except UnicodeDecodeError:
                raise AssetInputError(f"form field {self.current!r} is not UTF-8 text") from None
        self.current = None

    def on_end(self) -> None:
        self.ended = True

    # -- disk side (runs on a worker thread) -------------------------------------------------
    def flush(self) -> None:
        if self.writer is None:
            return
        chunks, self.pending, self.pending_size = self.pending, [], 0
        for chunk in chunks:
            self.writer.write(chunk)

    def discard(self) -> None:
        if self.writer is not None:
            self.writer.discard()


def boundary_of(content_type: str) -> bytes:
    media, params = parse_options_header(content_type)
    if media != b"multipart/form-data":
        raise AssetError("expected a multipart/form-data body")
    boundary = params.get(b"boundary")
    if not boundary:
        raise AssetError("multipart Content-Type has no boundary parameter")
    return boundary


async def read_upload(
    chunks: AsyncIterator[bytes],
    content_type: str,
    new_writer: Callable[[], StagingWriter],
    *,
    max_bytes: int,
    max_field_bytes: int,
) -> UploadForm:
    """Parse the body; on any error nothing is left in the staging area."""
    state = _State(new_writer, max_bytes, max_field_bytes)
    callbacks = {
        name: getattr(state, name)
        for name in (
            "on_part_begin",
            "on_header_field",
            "on_header_value",
            "on_header_end",
            "on_headers_finished",
            "on_part_data",
            "on_part_end",
            "on_end",
        )
    }
    try:
        parser = MultipartParser(boundary_of(content_type), callbacks)  # type: ignore[arg-type]
        async for chunk in chunks:
            parser.write(chunk)
            if state.pending_size >= FLUSH_AT:
                await asyncio.to_thread(state.flush)
        parser.finalize()
        if not state.ended:
            raise AssetError("multipart body ended before its closing boundary")
        staged = None
        if state.writer is not None:
            await asyncio.to_thread(state.flush)
            staged = await asyncio.to_thread(state.writer.finish)
        return UploadForm(staged, state.filename, state.fields)
    except FormParserError as exc:
        state.discard()
        raise AssetError(f"malformed multipart body: {exc}") from None
    except BaseException:
        state.discard()
        raise
