"""How often a busy stream is read from the engine and written to the client.

Every read of the engine's stream and every chunk written to a client has a fixed CPU cost (about 100 µs
through the HTTP client, Django and Daphne), while tokens arrive every few milliseconds. So streams are read and
written at intervals that grow with the number of streams in flight: a lone stream moves its text within about
15 ms, two hundred streams every 100 ms, in a few large pieces instead of hundreds of small ones. The first text
of a stream never waits.
"""

from __future__ import annotations

QUIET = 0.015  # seconds, with one stream in flight
PER_STREAM = 0.002  # more seconds for each other stream in flight
LONGEST = 0.1  # a reader still sees text appear smoothly


def interval(streams_in_flight: int) -> float:
    """Seconds a busy stream waits between two reads or two writes."""
    return min(LONGEST, QUIET + PER_STREAM * max(0, streams_in_flight - 1))
