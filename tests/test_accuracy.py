"""The embedded engine never reads a page worse than the RapidOCR it wraps (issue 13's regression guard).

Every page of the fast accuracy set is read by bare RapidOCR and through ``LocalEngine.recognise`` on the same
pixels in the same run (``bench.accuracy``); no page may come out more than one CER point worse, and the mean
must be at most half of bare RapidOCR's.
"""

from __future__ import annotations

import statistics

import pytest

from bench.accuracy import run

pytestmark = [pytest.mark.slow]


def test_no_page_is_more_than_one_cer_point_worse_than_bare_rapidocr():
    results = run(fast=True)
    assert len(results) >= 15
    worse = {r.name: f"app {r.app_cer:.1%} vs bare {r.bare_cer:.1%}" for r in results if r.delta > 0.01}
    assert worse == {}
    bare_mean = statistics.mean(r.bare_cer for r in results)
    app_mean = statistics.mean(r.app_cer for r in results)
    assert app_mean <= bare_mean / 2
    # The set must keep the pages that show the difference: bare RapidOCR interleaves columns.
    assert {r.name for r in results if r.bare_cer > 0.3} >= {"two_columns", "three_columns", "rotated_180"}
