"""GPU-equivalent time: what a run's calls would cost on the paper's GPUs.

Seconds measured here are seconds on this machine (a CPU, often), which say
little about what the same run costs where the paper ran it. The calls do:
a run is so many reasoning calls, captions made and video_qa calls, and each
kind has a price in GPU seconds. The default table is the paper's A800
figures: 2.5 s per reasoning round, 7.0 s per caption call, 2.7 s per
video_qa call; ``lvr1 report --price caption=4`` changes one.

What is priced, per question:

* ``reasoning``: each reasoning-model call that returned a reply (the agent's
  rounds; the baselines' one answer call).
* ``caption``: each caption *made*. A caption served from the store costs
  nothing on a GPU either, so the figure of a run depends on what the store
  held when it started, as its seconds do.
* ``video_qa``: each call a vision model answered (``Cost.video_qa_calls``;
  uniform-frames with a VLM is one such call). video_qa calls answered from a
  clip's caption notes (``Cost.video_qa_from_captions``, the CPU default) run
  no vision model and are priced 0; a caption they had to make is already
  counted among the captions made.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace

from longvideo_r1.agent.trace import Cost
from longvideo_r1.errors import ConfigError


@dataclass(frozen=True)
class GpuPrices:
    """GPU seconds per call of each kind (the paper's A800 figures by default)."""

    reasoning: float = 2.5
    caption: float = 7.0
    video_qa: float = 2.7

    def seconds(self, cost: Cost) -> float:
        """The GPU-equivalent seconds of one run's calls."""
        return (
            cost.reasoning_calls * self.reasoning
            + cost.captions_made * self.caption
            + cost.video_qa_calls * self.video_qa
        )

    def describe(self) -> str:
        """The table in words, for the report: a GPU figure without its prices misleads."""
        default = " (the paper's A800 figures)" if self == GpuPrices() else ""
        return (
            f"{self.reasoning:g} s per reasoning call, {self.caption:g} s per caption made, "
            f"{self.video_qa:g} s per video_qa call a vision model answered{default}"
        )


PRICE_KINDS = tuple(f.name for f in fields(GpuPrices))


def parse_prices(items: Iterable[str] | None) -> GpuPrices:
    """``KIND=SECONDS`` items over the default table; a bad one is refused in one line."""
    prices = GpuPrices()
    for item in items or ():
        kind, sep, value = item.partition("=")
        kind = kind.strip()
        if not sep or kind not in PRICE_KINDS:
            raise ConfigError(
                f"--price takes KIND=SECONDS with KIND one of {', '.join(PRICE_KINDS)}, "
                f"got {item!r}"
            )
        try:
            seconds = float(value)
        except ValueError:
            seconds = math.nan
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ConfigError(
                f"--price {kind} must be a number of seconds, 0 or more, got {value.strip()!r}"
            )
        prices = replace(prices, **{kind: seconds})
    return prices
