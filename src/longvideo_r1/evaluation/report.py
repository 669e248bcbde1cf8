"""Reports: accuracy against cost, side by side across methods and runs.

Reads eval output folders (``lvr1 eval --out DIR``; each holds one folder
per method with a ``run.json``), recomputes the metrics from the records
(never from a cached summary, so a resumed run is always counted once), and
writes a markdown page with a PNG plot of accuracy against cost beside it.

A *run* is one output folder, labelled by its name: two runs of the same
method (another model, another captioner, another machine) sit in adjacent
rows and as separate points of the plot.

A method folder with fewer results than its question file has questions is
*partial* (``--limit``, a run stopped, interrupted or killed, a result file
unreadable): its row says ``n of N, partial``, the page says why, and names
every unreadable result file.

Cost is shown in calls of each kind and in GPU-equivalent seconds (the calls
priced by :class:`~longvideo_r1.evaluation.prices.GpuPrices`, the table named
on the page) beside the seconds measured here; what earlier, interrupted or
replaced attempts spent is added in a note. Where the questions have clue
intervals, grounding (clue hits, F1 of visited against clue spans, how deep
the runs went) stands beside accuracy, per method and per category.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from longvideo_r1.errors import ConfigError
from longvideo_r1.evaluation.methods import METHODS
from longvideo_r1.evaluation.metrics import GroundingSummary, Metrics, compute_metrics, load_run
from longvideo_r1.evaluation.prices import GpuPrices
from longvideo_r1.evaluation.records import RunManifest, Unreadable, unwritable
from longvideo_r1.files import atomic_writer, write_atomic

CostAxis = Literal["seconds", "tokens", "gpu-seconds"]
COST_AXES: tuple[str, ...] = ("seconds", "tokens", "gpu-seconds")
METHOD_COLOURS = {
    "agent": "#1f77b4",
    "uniform-frames": "#ff7f0e",
    "caption-all": "#2ca02c",
    "random-walk": "#d62728",
}
RUN_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


@dataclass(frozen=True)
class RunResult:
    """One method's results in one run folder, with its metrics."""

    run: str
    folder: Path
    manifest: RunManifest
    metrics: Metrics
    unreadable: tuple[Unreadable, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.manifest.method} ({self.run})"

    @property
    def partial(self) -> bool:
        return self.metrics.partial

    def why_partial(self) -> str:
        """How many questions have a result, and what the manifest says about the rest."""
        m = self.metrics
        parts = [f"{m.n} of {m.questions} questions have a result"]
        last = self.manifest.runs[-1] if self.manifest.runs else None
        if last is not None:
            if last.limit is not None and last.limit < self.manifest.questions.count:
                parts.append(f"the last run was limited to {last.limit} (--limit)")
            if last.ended == "stopped":
                parts.append(f"the last run stopped: {last.stopped}")
            elif last.ended == "interrupted":
                parts.append("the last run was interrupted")
            elif last.ended is None and last.planned is not None:
                parts.append("the last run did not finish (killed, or still running)")
        if self.unreadable:
            many = "s" if len(self.unreadable) > 1 else ""
            parts.append(f"{len(self.unreadable)} result file{many} unreadable")
        return "; ".join(parts)


def _method_folders(out_dir: Path) -> list[Path]:
    """The method folders of an eval output folder (or the folder itself, if it is one)."""
    if (out_dir / "run.json").is_file():
        return [out_dir]
    found = sorted(p.parent for p in out_dir.glob("*/run.json"))
    order = {name: i for i, name in enumerate(METHODS)}
    return sorted(found, key=lambda p: (order.get(p.name, len(order)), p.name))


def _run_labels(out_dirs: Sequence[Path]) -> list[str]:
    """Folder names, made unique with their parents when two runs share a name."""
    labels = [d.resolve().name or str(d) for d in out_dirs]
    if len(set(labels)) == len(labels):
        return labels
    return [f"{d.resolve().parent.name}/{d.resolve().name}" for d in out_dirs]


def collect(
    out_dirs: Sequence[str | Path],
    prices: GpuPrices | None = None,
    only: Collection[str] | None = None,
) -> list[RunResult]:
    """Every method of every folder, in the order given; refuses a folder with no results.
    ``prices`` turn each run's calls into GPU-equivalent seconds (default: the paper's).

    ``only`` keeps those question ids and counts each run against them, so runs
    made on different question files (or stopped at different points) are
    compared on the same questions; a run missing some of them is partial.
    """
    dirs = [Path(d).expanduser() for d in out_dirs]
    results: list[RunResult] = []
    for out_dir, label in zip(dirs, _run_labels(dirs), strict=True):
        if not out_dir.is_dir():
            raise ConfigError(f"{out_dir} is not a folder of lvr1 eval results")
        folders = _method_folders(out_dir)
        if not folders:
            raise ConfigError(f"{out_dir} holds no method folder with a run.json")
        for folder in folders:
            data = load_run(folder)
            manifest = data.manifest
            records, count = data.records, manifest.questions.count
            if only is not None:
                records = [r for r in records if r.question_id in only]
                count = len(only)
            metrics = compute_metrics(
                records, manifest.method, manifest.variant, label, count, prices, data.reads
            )
            results.append(RunResult(label, folder, manifest, metrics, tuple(data.unreadable)))
    return results


# markdown ------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def _failures(m: Metrics) -> str:
    if not m.failures:
        return "0"
    kinds = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in m.failure_kinds.items())
    return f"{m.failures} ({kinds})"


def main_table(results: Sequence[RunResult]) -> list[str]:
    """One row per method and run: accuracy, failures apart, mean cost per question in calls
    of each kind, in GPU-equivalent seconds and in seconds measured here."""
    head = (
        "| method | variant | run | n | accuracy | failures | rounds | captions made / cached "
        "| video_qa vision / from captions | frames | tokens | GPU-equiv. s / question "
        "| GPU-equiv. s, empty store | s / question |"
    )
    rows = [head, "|" + "---|" * 14]
    for r in results:
        m, c = r.metrics, r.metrics.cost
        acc = f"{_pct(m.accuracy)} ({m.correct}/{m.scored})"
        n = m.coverage + (", partial" if m.partial else "")
        rows.append(
            f"| {r.manifest.method} | {r.manifest.variant} | {r.run} | {n} | {acc} "
            f"| {_failures(m)} | {_num(c['rounds'].mean)} "
            f"| {_num(c['captions_made'].mean)} / {_num(c['captions_cached'].mean)} "
            f"| {_num(c['video_qa_calls'].mean, 2)} / {_num(c['video_qa_from_captions'].mean, 2)} "
            f"| {_num(c['frames_decoded'].mean, 0)} | {_num(c['tokens'].mean, 0)} "
            f"| {_num(c['gpu_seconds'].mean)} | {_opt(m.gpu_seconds_empty_store)} "
            f"| {_num(c['seconds'].mean)} |"
        )
    return rows


def _opt(value: float | None) -> str:
    return "-" if value is None else _num(value)


def prior_lines(results: Sequence[RunResult]) -> list[str]:
    """What earlier attempts (interrupted, or replaced by --retry-failed) spent beyond the
    table's figures, which count each question's final attempt; nothing when none."""
    lines = []
    for r in results:
        p, c = r.metrics.prior, r.metrics.cost
        if not p.attempts:
            continue
        many = "s" if p.attempts > 1 else ""
        lines.append(
            f"- {r.label}: {p.attempts} earlier attempt{many} at {p.questions} "
            f"question{'s' if p.questions > 1 else ''} spent {p.cost.reasoning_calls} reasoning "
            f"calls, {p.cost.captions_made} captions made, {p.cost.video_qa_calls} video_qa, "
            f"{_num(p.gpu_seconds)} GPU-equiv. s and {_num(p.seconds)} s; with them a question "
            f"cost {_num(c['gpu_seconds_spent'].mean)} GPU-equiv. s and "
            f"{_num(c['seconds_spent'].mean)} s on average, {_num(c['gpu_seconds_spent'].total)} "
            f"GPU-equiv. s and {_num(c['seconds_spent'].total)} s in all"
        )
    if not lines:
        return []
    return ["Spent by earlier attempts (not in the tables above):", "", *lines]


def _hits(g: GroundingSummary) -> str:
    return "-" if not g.n else f"{g.hits}/{g.n}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _levels(g: GroundingSummary) -> str:
    if not g.navigated:
        return "-"
    return " / ".join(str(g.levels.get(name, 0)) for name in ("low", "medium", "none"))


def grounding_table(results: Sequence[RunResult]) -> list[str]:
    """Clue hits, span F1 and depth beside accuracy, one row per method and run; nothing when
    no run has any grounding (no clue intervals, or records older than it)."""
    if not any(r.metrics.grounding.n or r.metrics.grounding.navigated for r in results):
        return []
    head = (
        "| method | run | accuracy | clue hits | F1 | precision | recall "
        "| deepest level low / medium / none |"
    )
    rows = [head, "|" + "---|" * 8]
    for r in results:
        m, g = r.metrics, r.metrics.grounding
        rows.append(
            f"| {r.manifest.method} | {r.run} | {_pct(m.accuracy)} | {_hits(g)} "
            f"| {_ratio(g.f1)} | {_ratio(g.precision)} | {_ratio(g.recall)} | {_levels(g)} |"
        )
    return rows


def spread_table(results: Sequence[RunResult]) -> list[str]:
    """Median and 90th percentile: means hide the slow tail that users wait on."""
    head = (
        "| method | run | s / question median / p90 | model s median / p90 "
        "| tokens median / p90 | caption calls median / p90 |"
    )
    rows = [head, "|" + "---|" * 6]
    for r in results:
        c = r.metrics.cost

        def pair(key: str, digits: int = 1, c=c) -> str:
            return f"{_num(c[key].median, digits)} / {_num(c[key].p90, digits)}"

        rows.append(
            f"| {r.manifest.method} | {r.run} | {pair('seconds')} | {pair('model_seconds')} "
            f"| {pair('tokens', 0)} | {pair('caption_calls', 0)} |"
        )
    return rows


def category_table(results: Sequence[RunResult]) -> list[str]:
    """Accuracy per question category, one column per method and run."""
    names = sorted({name for r in results for name in r.metrics.categories})
    if not names:
        return []
    rows = [
        "| category | " + " | ".join(r.label for r in results) + " |",
        "|" + "---|" * (len(results) + 1),
    ]
    for name in names:
        cells = []
        for r in results:
            score = r.metrics.categories.get(name)
            cell = "-" if score is None else f"{_pct(score.accuracy)} ({score.correct}/{score.n})"
            g = r.metrics.category_grounding.get(name)
            if score is not None and g is not None and g.n:
                cell += f"; clue hits {g.hits}/{g.n}, F1 {_ratio(g.f1)}"
            cells.append(cell)
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def provenance(results: Sequence[RunResult]) -> list[str]:
    """Which models and question file each row comes from: numbers without these mislead."""
    lines = []
    for r in results:
        ids = ", ".join(f"{role} `{name}`" for role, name in sorted(r.manifest.identities.items()))
        q = r.manifest.questions
        lines.append(
            f"- {r.label}: {r.manifest.benchmark}, {q.count} questions in `{Path(q.path).name}` "
            f"(sha256 {q.sha256[:12]}); {ids}"
        )
    return lines


COMPLETE_NOTE = (
    "Accuracy counts every question: a failure (no answer, an unparsable answer, an "
    "error) is wrong, and failures are also listed apart."
)
PARTIAL_NOTE = (
    "Accuracy is over the questions with a result: a failure (no answer, an unparsable "
    "answer, an error) is wrong, and failures are also listed apart. Partial runs (n "
    "below the question count, listed under the tables) have no result for some questions "
    "of their file; those are in no figure, so their accuracy is not the benchmark's."
)
COST_NOTE = (
    "Costs are means per question over the questions a method ran for; seconds are end "
    "to end in the harness on the machine that ran it (decoding, captions made on demand "
    "and network included). GPU-equivalent seconds price the calls instead: {prices}; a "
    "caption served from the store and a video_qa answered from caption notes cost 0 "
    "(`lvr1 report --price KIND=SECONDS` changes a price). The empty-store column prices "
    "the run as if no caption had been cached: each distinct caption its traces read on a "
    "video is one caption made, shared by that video's questions."
)
GROUNDING_NOTE = (
    "Grounding, where the questions have clue intervals: a clue hit is a question where a "
    "node the method chose to read (a medium or low caption, or a leaf asked with video_qa; "
    "not the opening's high-level captions, which every method is given) overlaps a clue; "
    "F1, precision and recall compare the union of the spans read with the union of the "
    "clue spans, means over the questions with clues. Deepest level counts the questions "
    "by the finest level read (none: nothing read). `-`: the method reads no node "
    "(uniform-frames), or the records predate these figures."
)


def partial_lines(results: Sequence[RunResult]) -> list[str]:
    """Why each partial run is partial, then every result file that was not counted."""
    lines = [f"- {r.label}: {r.why_partial()}" for r in results if r.partial]
    if lines:
        lines = ["Partial runs:", "", *lines]
    unreadable = [f"- {r.label}: `{u.path}`: {u.reason}" for r in results for u in r.unreadable]
    if unreadable:
        lines += ["", "Result files not counted (unreadable):", "", *unreadable]
    return lines


def markdown(
    results: Sequence[RunResult], plot_name: str | None = None, prices: GpuPrices | None = None
) -> str:
    """The report page: main table, spread, earlier attempts, partial runs, grounding,
    per-category accuracy, provenance, plot link. A partial run changes the opening note: its
    accuracy is not over every question. ``prices`` are the ones the metrics were priced with."""
    note = PARTIAL_NOTE if any(r.partial for r in results) else COMPLETE_NOTE
    cost_note = COST_NOTE.format(prices=(prices or GpuPrices()).describe())
    parts = [
        f"{note} {cost_note}",
        "",
        *main_table(results),
        "",
        *spread_table(results),
    ]
    for section in (prior_lines(results), partial_lines(results)):
        if section:
            parts += ["", *section]
    grounding = grounding_table(results)
    if grounding:
        parts += ["", GROUNDING_NOTE, "", *grounding]
    categories = category_table(results)
    if categories:
        title = "Accuracy" + (" and grounding" if grounding else "") + " per category:"
        parts += ["", title, "", *categories]
    parts += ["", "Where the numbers come from:", "", *provenance(results)]
    if plot_name:
        parts += ["", f"![accuracy against cost]({plot_name})"]
    return "\n".join(parts) + "\n"


# the plot ------------------------------------------------------------------------------


AXIS_COSTS: dict[str, str] = {
    "seconds": "seconds",
    "tokens": "tokens",
    "gpu-seconds": "gpu_seconds",
}
AXIS_LABELS: dict[str, str] = {
    "seconds": "mean end-to-end seconds per question",
    "tokens": "mean tokens per question (all models)",
    "gpu-seconds": "mean GPU-equivalent seconds per question",
}


def _cost(r: RunResult, axis: CostAxis) -> float:
    return r.metrics.cost[AXIS_COSTS[axis]].mean


def plotted(results: Sequence[RunResult]) -> list[RunResult]:
    """The results the plot shows: those with a question that did not fail.

    A method whose every question failed has no cost to place it at; it stays
    in the tables with its failures rather than sitting at x = 0.
    """
    return [
        r for r in results if r.metrics.accuracy is not None and r.metrics.failures < r.metrics.n
    ]


def plot(
    results: Sequence[RunResult],
    path: Path,
    axis: CostAxis = "seconds",
    prices: GpuPrices | None = None,
) -> Path:
    """Accuracy against mean cost per question, one point per method and run, in the legend.

    Built on a bare Agg canvas (no pyplot), so no global backend or figure
    state is touched and it works on machines without a display.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.0, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    runs = list(dict.fromkeys(r.run for r in results))
    points = plotted(results)
    for r in points:
        x, y = _cost(r, axis), 100 * (r.metrics.accuracy or 0.0)
        ax.scatter(
            [x],
            [y],
            s=70,
            color=METHOD_COLOURS.get(r.manifest.method, "#7f7f7f"),
            marker=RUN_MARKERS[runs.index(r.run) % len(RUN_MARKERS)],
            edgecolors="black",
            linewidths=0.6,
            zorder=3,
            label=f"{r.label}: {y:.0f}%"
            + (f" (partial, {r.metrics.coverage})" if r.partial else ""),
        )
    xs = [_cost(r, axis) for r in points if _cost(r, axis) > 0]
    if xs and max(xs) / min(xs) > 30:
        ax.set_xscale("log")
    label = AXIS_LABELS[axis]
    if axis == "gpu-seconds":
        p = prices or GpuPrices()
        label += (
            f" (reasoning {p.reasoning:g} s, caption made {p.caption:g} s, "
            f"video_qa {p.video_qa:g} s)"
        )
    ax.set_xlabel(label)
    ax.set_ylabel("accuracy (%), failures counted wrong")
    ax.set_ylim(0, 100)
    ax.set_xlim(left=0 if ax.get_xscale() == "linear" else None)
    ax.grid(True, alpha=0.3)
    if points:  # a legend, not annotations: close points would print their labels over each other
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    ax.set_title("Accuracy against cost")
    # bbox "tight" sizes the image to what was drawn: the legend right of the axes and a long
    # GPU-price label would otherwise be cut at the figure's edge.
    with atomic_writer(path, binary=True) as handle:
        fig.savefig(handle, format="png", bbox_inches="tight")
    return path


@dataclass(frozen=True)
class Report:
    markdown: str
    markdown_path: Path
    plot_path: Path | None


def write_report(
    out_dirs: Sequence[str | Path],
    out: str | Path | None = None,
    axis: CostAxis = "seconds",
    prices: GpuPrices | None = None,
    only: Collection[str] | None = None,
) -> Report:
    """Markdown at ``out`` (default ``<first folder>/report.md``), the PNG beside it; GPU
    figures priced with ``prices`` (default: the paper's)."""
    if axis not in COST_AXES:
        raise ConfigError(f"--x must be one of {', '.join(COST_AXES)}, got {axis!r}")
    results = collect(out_dirs, prices, only)
    md_path = Path(out).expanduser() if out else Path(out_dirs[0]).expanduser() / "report.md"
    if md_path.suffix.lower() != ".md":
        raise ConfigError(f"--out names the markdown file and must end in .md, got {md_path}")
    if md_path.is_dir():
        raise ConfigError(f"cannot write {md_path}: it is a folder")
    png_path = md_path.with_suffix(".png")
    text = markdown(results, png_path.name, prices)
    for path, write in (
        (png_path, lambda: plot(results, png_path, axis, prices)),
        (md_path, lambda: write_atomic(md_path, text)),
    ):
        try:
            write()
        except OSError as exc:
            raise ConfigError(unwritable(path, exc)) from None
    return Report(text, md_path, png_path)
