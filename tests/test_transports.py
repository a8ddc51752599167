"""``ocr/transports.py``: the pipeline's events as NDJSON lines for scripts and Server-Sent Events for browsers.

Pure functions over plain events: no database, no engine. ``tests/contract.py`` checks whole streams.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ocr.transports import (
    encode_ndjson,
    encode_ndjson_frames,
    merge_deltas,
    ndjson_frame,
    ndjson_frames_stream,
    ndjson_stream,
    sse_event,
)


def delta(page: int, text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "page_delta", "page": page, "delta": text, **extra}


def lines(chunk: bytes) -> list[dict[str, Any]]:
    assert chunk.endswith(b"\n"), "every NDJSON line ends with a newline"
    return [json.loads(line) for line in chunk.decode().splitlines()]


IMAGE_END = {
    "type": "end",
    "status": "done",
    "job_id": "j",
    "usage": {"pages": 1, "prompt_tokens": 1},
    "pages_done": 1,
    "pages_failed": 0,
}


# --- merging deltas ---------------------------------------------------------------------------------------


def test_a_reset_delta_drops_what_came_before_it_in_the_batch():
    batch = [
        {"type": "page_delta", "page": 1, "delta": "a"},
        {"type": "page_delta", "page": 2, "delta": "x"},
        {"type": "page_delta", "page": 1, "delta": "new", "reset": True},
        {"type": "page_delta", "page": 1, "delta": "er"},
    ]

    assert merge_deltas(batch) == [
        {"type": "page_delta", "page": 1, "delta": "newer", "reset": True},
        {"type": "page_delta", "page": 2, "delta": "x"},
    ]
    assert encode_ndjson(batch, "image").decode().splitlines() == [
        '{"type":"delta","delta":"newer","reset":true}',
        '{"type":"delta","delta":"x"}',
    ]


def test_merging_keeps_each_pages_text_in_order():
    batch = [
        {"type": "page_start", "page": 1},
        {"type": "page_delta", "page": 1, "delta": "a"},
        {"type": "page_delta", "page": 2, "delta": "x"},
        {"type": "page_delta", "page": 1, "delta": "b"},
        {"type": "page_end", "page": 1},
        {"type": "page_delta", "page": 2, "delta": "y"},
    ]

    assert merge_deltas(batch) == [
        {"type": "page_start", "page": 1},
        {"type": "page_delta", "page": 1, "delta": "ab"},
        {"type": "page_delta", "page": 2, "delta": "x"},
        {"type": "page_end", "page": 1},
        {"type": "page_delta", "page": 2, "delta": "y"},
    ]


def test_a_reset_is_kept_only_until_the_next_other_event():
    """Deltas are never merged across another event: the reset belongs to the merged delta before it, not to the
    page's deltas after it."""
    batch = [delta(1, "a", reset=True), {"type": "page_start", "page": 2}, delta(1, "b")]

    assert merge_deltas(batch) == [delta(1, "a", reset=True), {"type": "page_start", "page": 2}, delta(1, "b")]


def test_the_last_reset_of_a_page_wins_and_its_text_follows_it():
    batch = [delta(1, "one"), delta(1, "two", reset=True), delta(1, "!"), delta(1, "three", reset=True)]

    assert merge_deltas(batch) == [delta(1, "three", reset=True)]


def test_merging_leaves_the_events_it_was_given_unchanged():
    batch = [delta(1, "a"), delta(1, "b", reset=True), delta(1, "c")]
    copy = [dict(event) for event in batch]

    merge_deltas(batch)

    assert batch == copy


def test_a_batch_without_deltas_is_passed_through_and_an_empty_one_stays_empty():
    batch = [{"type": "page_start", "page": 1}, {"type": "page_end", "page": 1}]

    assert merge_deltas(batch) == batch
    assert merge_deltas([]) == []
    assert encode_ndjson([], "pdf") == b""


# --- frames for each kind of job --------------------------------------------------------------------------


def test_a_pdf_job_s_events_are_its_frames_unchanged():
    events = [{"type": "start", "kind": "pdf", "pages": 2}, delta(1, "a", reset=True), {"type": "page_end", "page": 1}]

    assert [ndjson_frame(event, "pdf") for event in events] == events


def test_image_frames_use_the_image_vocabulary():
    batch = [
        {"type": "start", "kind": "image", "job_id": "j", "pages": 1},
        {"type": "page_start", "page": 1},
        {"type": "page_delta", "page": 1, "delta": "hé"},
        {"type": "page_end", "page": 1, "usage": {}},
        IMAGE_END,
    ]

    assert encode_ndjson(batch, "image").decode().splitlines() == [
        '{"type":"start","kind":"image","job_id":"j"}',
        '{"type":"delta","delta":"hé"}',
        '{"type":"end","status":"done","job_id":"j","usage":{"prompt_tokens":1}}',
    ]


def test_an_image_delta_keeps_its_reset_and_nothing_of_the_page():
    assert ndjson_frame(delta(1, "new", reset=True), "image") == {"type": "delta", "delta": "new", "reset": True}
    assert ndjson_frame(delta(1, "more"), "image") == {"type": "delta", "delta": "more"}


def test_image_frames_leave_the_events_page_fields_alone():
    start = {"type": "start", "kind": "image", "job_id": "j", "pages": 1}
    end = json.loads(json.dumps(IMAGE_END))

    ndjson_frame(start, "image")
    ndjson_frame(end, "image")

    assert start["pages"] == 1
    assert end["usage"]["pages"] == 1 and end["pages_done"] == 1, "the job's log and other readers still need them"


def test_an_image_job_has_no_page_frames_and_its_errors_pass_through():
    error = {"type": "error", "error": {"code": "engine_error", "message": "Down."}}

    assert ndjson_frame({"type": "page_start", "page": 1}, "image") is None
    assert ndjson_frame({"type": "page_end", "page": 1, "usage": {}}, "image") is None
    assert ndjson_frame(error, "image") == error
    assert encode_ndjson([{"type": "page_start", "page": 1}], "image") == b"", "no line for a hidden frame"


# --- frames with their seq (a job's event log) ------------------------------------------------------------


def test_logged_frames_keep_their_seq_and_are_never_merged():
    batch = [
        {"type": "page_start", "page": 1, "seq": 4},
        delta(1, "a", seq=5),
        delta(1, "b", seq=6),
        {"type": "page_end", "page": 1, "usage": {}, "seq": 7},
    ]

    image = lines(encode_ndjson_frames(batch, "image"))
    pdf = lines(encode_ndjson_frames(batch, "pdf"))

    assert image == [{"type": "delta", "delta": "a", "seq": 5}, {"type": "delta", "delta": "b", "seq": 6}]
    assert [frame["seq"] for frame in pdf] == [4, 5, 6, 7] and pdf == batch
    assert encode_ndjson_frames([], "pdf") == b""


def test_a_frame_without_a_seq_is_sent_without_one():
    assert lines(encode_ndjson_frames([delta(1, "a")], "image")) == [{"type": "delta", "delta": "a"}]


# --- streams ----------------------------------------------------------------------------------------------


async def test_the_ndjson_stream_skips_empty_chunks_and_closes_its_source_when_the_client_leaves():
    closed = []

    async def batches() -> AsyncIterator[list[dict[str, Any]]]:
        try:
            yield [{"type": "page_start", "page": 1}]  # hidden for an image: no chunk at all
            yield [delta(1, "a"), delta(1, "b")]
            yield [delta(1, "never read")]
        finally:
            closed.append(True)

    stream = ndjson_stream(batches(), "image")
    first = await anext(stream)
    await stream.aclose()

    assert lines(first) == [{"type": "delta", "delta": "ab"}]
    assert closed == [True], "the pipeline's generator is closed at once, not when it is garbage-collected"


async def test_the_logged_frames_stream_turns_an_empty_batch_into_a_keep_alive_line():
    async def batches() -> AsyncIterator[list[dict[str, Any]]]:
        yield []
        yield [delta(1, "a", seq=1)]

    chunks = [chunk async for chunk in ndjson_frames_stream(batches(), "pdf")]

    assert chunks[0] == b"\n"
    assert lines(chunks[1]) == [delta(1, "a", seq=1)]


# --- Server-Sent Events -----------------------------------------------------------------------------------


def test_an_sse_event_with_several_lines_sends_one_data_line_each():
    assert sse_event("<p>one</p>\n<p>two</p>") == b"event: update\ndata: <p>one</p>\ndata: <p>two</p>\n\n"


@pytest.mark.parametrize("newline", ["\r\n", "\r", "\n"])
def test_every_kind_of_line_break_in_sse_data_becomes_a_data_line(newline):
    assert sse_event(f"a{newline}b", event="close") == b"event: close\ndata: a\ndata: b\n\n"


def test_an_sse_event_id_comes_first_and_empty_data_is_still_a_data_line():
    assert sse_event("", event="close", event_id=7) == b"id: 7\nevent: close\ndata: \n\n"
    assert sse_event("x", event_id=0).startswith(b"id: 0\n"), "0 is an id too"


def test_sse_data_is_utf8():
    assert sse_event("最后一页 é").decode("utf-8") == "event: update\ndata: 最后一页 é\n\n"
