"""The usage page's 30-day bar chart: its geometry, computed here so that the template only places SVG elements."""

from __future__ import annotations

from typing import Any

from ocr.selectors import DayUsage


def usage_chart(days: list[DayUsage]) -> dict[str, Any]:
    """The bars (prompt and completion tokens stacked), the four ticks of a round scale, and the labels."""
    width, height, left, bottom, top = 720, 240, 56, 28, 12
    plot_width, plot_height = width - left - 8, height - bottom - top
    peak = max((day.total_tokens for day in days), default=0)
    scale_max = _nice_ceiling(peak)
    slot = plot_width / max(len(days), 1)
    bars = []
    for index, day in enumerate(days):
        x = left + index * slot + slot * 0.15
        prompt_h = plot_height * day.prompt_tokens / scale_max if scale_max else 0
        completion_h = plot_height * day.completion_tokens / scale_max if scale_max else 0
        bars.append(
            {
                "day": day,
                "x": round(x, 1),
                "width": round(slot * 0.7, 1),
                "prompt_y": round(top + plot_height - prompt_h, 1),
                "prompt_h": round(prompt_h, 1),
                "completion_y": round(top + plot_height - prompt_h - completion_h, 1),
                "completion_h": round(completion_h, 1),
                "label_x": round(x + slot * 0.35, 1),
                "show_label": index % 5 == 0 or index == len(days) - 1,
            }
        )
    ticks = [
        {"value": scale_max * step // 4, "y": round(top + plot_height - plot_height * step / 4, 1)} for step in range(5)
    ]
    return {
        "width": width,
        "height": height,
        "left": left,
        "right": width - 8,
        "baseline": top + plot_height,
        "label_y": height - 8,
        "bars": bars,
        "ticks": ticks,
        "empty": peak == 0,
    }


def _nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 2.5, 5 × 10ⁿ (times 4 ticks) that is at least ``value``."""
    if value <= 0:
        return 0
    magnitude = 1
    while True:
        for step in (1, 2, 2.5, 5):
            candidate = int(step * magnitude * 4)
            if candidate >= value:
                return candidate
        magnitude *= 10
