"""The NDJSON frame contract (ARCHITECTURE.md) as one checker every stream test runs."""

from __future__ import annotations

from typing import Any

from ocr import events
from ocr.events import EventType
from ocr.statuses import JobStatus

PAGE_USAGE_KEYS = set(events.required_fields(events.PageUsage))
PDF_USAGE_KEYS = set(events.required_fields(events.PdfUsage))
IMAGE_USAGE_KEYS = PDF_USAGE_KEYS - events.IMAGE_USAGE_OMITTED
JOB_STATUSES = set(JobStatus.run_endings())


def required_keys(frame_type: str, kind: str) -> set[str]:
    """The fields every ``frame_type`` frame of a ``kind`` stream carries, as ``ocr.events`` declares them."""
    if kind == "image" and frame_type == EventType.DELTA:
        return {"type"} | set(events.required_fields(events.PageDeltaFrame)) - {"page"}
    keys = set(events.required_fields(events.FRAMES[frame_type]))
    return keys - events.IMAGE_OMITTED.get(frame_type, set()) if kind == "image" else keys


def assert_contract(frames: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """Check the invariants of a complete stream and return its ``end`` frame."""
    assert frames, "empty stream"
    start, end = frames[0], frames[-1]
    assert start["type"] == "start" and start["kind"] == kind
    assert end["type"] == "end", f"last frame is {end['type']}"
    assert [f["type"] for f in frames].count("end") == 1
    assert [f["type"] for f in frames].count("start") == 1
    assert end["status"] in JOB_STATUSES
    assert end["job_id"] == start["job_id"]
    for frame in frames:
        missing = required_keys(frame["type"], kind) - set(frame)
        assert not missing, f"{frame['type']} frame without {sorted(missing)}"
    errors = [i for i, f in enumerate(frames) if f["type"] == "error"]
    if end["status"] == "failed":
        assert errors == [len(frames) - 2], "a failed job sends one error frame right before end"
        assert set(frames[-2]["error"]) >= {"code", "message"}
    else:
        assert errors == []
    if kind == "image":
        assert set(end["usage"]) >= IMAGE_USAGE_KEYS
        allowed = {"start", "delta", "error", "end"}
        assert {f["type"] for f in frames} <= allowed
        for frame in frames:
            if frame["type"] == "delta":
                assert isinstance(frame["delta"], str)
        return end
    pages = start["pages"]
    assert isinstance(pages, int) and pages >= 1
    assert set(end["usage"]) >= PDF_USAGE_KEYS
    assert end["usage"]["pages"] == pages
    started: set[int] = set()
    ended: set[int] = set()
    for frame in frames[1:-1]:
        kind_ = frame["type"]
        if kind_ == "page_start":
            assert frame["page"] not in started, "page started twice"
            assert 1 <= frame["page"] <= pages
            started.add(frame["page"])
        elif kind_ == "page_delta":
            assert frame["page"] in started and frame["page"] not in ended, "delta outside its page"
            assert isinstance(frame["delta"], str)
        elif kind_ == "page_end":
            assert frame["page"] in started and frame["page"] not in ended, "page ended twice or never started"
            ended.add(frame["page"])
            assert set(frame["usage"]) >= PAGE_USAGE_KEYS
            if frame["status"] == "failed":
                assert set(frame["error"]) >= {"code", "message"}
        else:
            assert kind_ == "error", f"unexpected frame {kind_}"
    assert started == ended, "every page_start gets exactly one page_end"
    return end


def streamed_text(frames: list[dict[str, Any]], page: int | None = None) -> str:
    """The text a client shows after ``frames``: the deltas of ``page`` (an image's ``delta`` frames when
    ``None``), where a delta with ``reset`` replaces what came before it."""
    text = ""
    for frame in frames:
        if (page is None and frame["type"] == "delta") or (frame["type"] == "page_delta" and frame["page"] == page):
            text = frame["delta"] if frame.get("reset") else text + frame["delta"]
    return text
