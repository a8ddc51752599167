"""The pipeline's events on the wire: NDJSON for scripts, Server-Sent Events for browsers. Encoding only: what
each frame holds, and what an image job's stream shows of it, is ``ocr.events``'.

NDJSON frames are the published contract (``ARCHITECTURE.md``). Each batch of ready events becomes one chunk;
consecutive deltas of one page within a batch are merged into one frame, which the contract allows (a page
has "zero or more" delta frames) and which keeps the cost per token low under load.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import aclosing

import orjson

from ocr.events import Event, EventType, image_frame, page_delta
from ocr.statuses import JobKind

NDJSON_CONTENT_TYPE = "application/x-ndjson; charset=utf-8"


def merge_deltas(batch: Iterable[Event]) -> list[Event]:
    """Merge the ``page_delta`` events of each page between two other events, keeping every page's order.

    A delta that resets its page's text makes the merged delta a reset too, and drops what came before it."""
    merged: list[Event] = []
    pending: dict[int, list[str]] = {}
    resets: set[int] = set()

    def flush() -> None:
        for page, parts in pending.items():
            merged.append(page_delta(page, "".join(parts), reset=page in resets))
        pending.clear()
        resets.clear()

    for event in batch:
        if event["type"] == EventType.PAGE_DELTA:
            page = event["page"]
            if event.get("reset"):
                pending[page] = [event["delta"]]
                resets.add(page)
                continue
            parts = pending.get(page)
            if parts is None:
                pending[page] = [event["delta"]]
            else:
                parts.append(event["delta"])
        else:
            if pending:
                flush()
            merged.append(event)
    if pending:
        flush()
    return merged


def ndjson_frame(event: Event, kind: str) -> Event | None:
    """The NDJSON frame for ``event`` in a job of ``kind``, or ``None`` when that kind has no such frame."""
    return image_frame(event) if kind == JobKind.IMAGE else event


def encode_ndjson(batch: Iterable[Event], kind: str) -> bytes:
    lines = []
    for event in merge_deltas(batch):
        frame = ndjson_frame(event, kind)
        if frame is not None:
            lines.append(orjson.dumps(frame))
    if not lines:
        return b""
    lines.append(b"")
    return b"\n".join(lines)


def encode_ndjson_frames(batch: Iterable[Event], kind: str) -> bytes:
    """Like ``encode_ndjson`` for frames that carry their ``seq`` (a job's event log): one line per frame, never
    merged, each keeping its ``seq`` so that a client can resume after any of them."""
    lines = []
    for event in batch:
        frame = ndjson_frame(event, kind)
        if frame is None:
            continue
        if "seq" in event and "seq" not in frame:
            frame = {**frame, "seq": event["seq"]}
        lines.append(orjson.dumps(frame))
    if not lines:
        return b""
    lines.append(b"")
    return b"\n".join(lines)


async def ndjson_stream(batches: AsyncIterator[list[Event]], kind: str) -> AsyncIterator[bytes]:
    # Closing explicitly: an abandoned inner generator would only be finalised by the garbage collector,
    # leaving the job's engine requests running after the client left.
    async with aclosing(batches) as stream:
        async for batch in stream:
            chunk = encode_ndjson(batch, kind)
            if chunk:
                yield chunk


async def ndjson_frames_stream(batches: AsyncIterator[list[Event]], kind: str) -> AsyncIterator[bytes]:
    """``ndjson_stream`` for logged frames (``encode_ndjson_frames``); an empty batch becomes an empty line, the
    keep-alive that also notices a client gone."""
    async with aclosing(batches) as stream:
        async for batch in stream:
            yield encode_ndjson_frames(batch, kind) or b"\n"


def sse_event(data: str, *, event: str = "update", event_id: int | None = None) -> bytes:
    """One Server-Sent Event (the browser's transport; its data are HTML fragments, see ``ocr.fragments``).

    Multi-line data become several ``data:`` lines, as the format requires; ``event_id`` is what the browser sends
    back as ``Last-Event-ID`` when it reconnects."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"event: {event}")
    text = data.replace("\r\n", "\n").replace("\r", "\n")
    lines.extend(f"data: {line}" for line in text.split("\n"))
    return ("\n".join(lines) + "\n\n").encode("utf-8")
