"""Draw the SCM architecture figure (``SCM.png`` at the repository root, shown by the README).

The figure shows the method: the monitored LLM's stream, the causal backbone, the two heads, the training loss and
the delay-k stop. The code's layout (folders and who imports whom) is the picture at the top of
``docs/ARCHITECTURE.md``, not this figure.

The figure is generated, not hand-drawn, so that it stays in step with the code: the worked delay-k example in it
is computed with :func:`utils.decision_rules.delay_k_stop_index`, the same rule the evaluation and streaming use.
Rendering uses matplotlib's Agg backend with no network access and no timestamp metadata, so the same environment
always produces the same bytes.

Commands::

    # regenerate the README figure in place
    python scripts/draw_architecture.py
    # write it elsewhere, at another resolution
    python scripts/draw_architecture.py --output /tmp/SCM.png --dpi 200
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass, field
from pathlib import Path

# Run as a plain file (``python scripts/draw_architecture.py``), Python puts scripts/ on sys.path, not the
# repository root; add the root so the project's packages import the same way as in the other entry points.
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # headless and deterministic; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

from utils.decision_rules import delay_k_stop_index  # noqa: E402
from utils.io_utils import atomic_write  # noqa: E402

FIGURE_SIZE_INCHES = (12.0, 6.0)
MIN_DPI, MAX_DPI = 50, 600

# The worked example shown in the inference panel: illustrative scores, the paper's rule computes the stop.
EXAMPLE_SCORES = (0.04, 0.57, 0.12, 0.88, 0.93)
EXAMPLE_THETA = 0.5
EXAMPLE_K = 2

# One colour per role, so a reader can follow a quantity from the box that makes it to the box that uses it.
COLOURS = {
    "llm": ("#e8eef7", "#4a6fa5"),
    "prompt": ("#eeeeee", "#777777"),
    "token": ("#ffffff", "#4a6fa5"),
    "held": ("#f4f4f4", "#bbbbbb"),
    "backbone": ("#e6f2e6", "#3c8d3c"),
    "head_tok": ("#fff3e0", "#d9822b"),
    "head_hol": ("#f3e8f7", "#8e5ba8"),
    "loss": ("#fafafa", "#555555"),
    "infer": ("#fdecea", "#c0392b"),
    "safe": ("#e9f5e9", "#3c8d3c"),
    "harmful": ("#fbe3e0", "#c0392b"),
}
TRAIN_COLOUR = "#555555"
INFER_COLOUR = "#c0392b"


@dataclass
class DrawArguments:
    """Where to write the figure and at what resolution."""

    output: str = field(
        default=str(REPO_ROOT / "SCM.png"), metadata={"help": "PNG file to write (default: SCM.png at the repo root)."}
    )
    dpi: int = field(default=150, metadata={"help": f"Resolution in dots per inch ({MIN_DPI}-{MAX_DPI})."})


def parse_args(argv: list[str] | None = None) -> DrawArguments:
    """Parse the command line; an unknown flag is an error that suggests the closest valid one.

    Args:
        argv: arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        The parsed :class:`DrawArguments`.
    """
    from utils.cli import parse_dataclasses  # imports transformers; only the command line needs it

    (args,) = parse_dataclasses((DrawArguments,), argv, prog="draw_architecture.py")
    return args


def _validate(args: DrawArguments) -> Path:
    """Check the options before drawing, so that a bad value fails fast with the fix in the message."""
    output = Path(args.output)
    if output.suffix.lower() != ".png":
        raise ValueError(f"--output {args.output!r}: the figure is a PNG; give a path ending in .png")
    if not MIN_DPI <= args.dpi <= MAX_DPI:
        raise ValueError(f"--dpi {args.dpi}: choose a value between {MIN_DPI} and {MAX_DPI} (the README uses 150)")
    return output


def _box(ax, x: float, y: float, w: float, h: float, text: str, role: str, fontsize: float = 9.5, **text_kw):
    """Draw a rounded box with centred text; (x, y) is the lower-left corner in figure inches."""
    face, edge = COLOURS[role]
    ax.add_patch(
        FancyBboxPatch(
            (x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08", facecolor=face, edgecolor=edge, linewidth=1.3
        )
    )
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize, linespacing=1.35, **text_kw)


def _arrow(ax, start, end, colour: str = "#333333", dashed: bool = False, connection: str = "arc3", width: float = 1.3):
    """Draw an arrow between two points in figure inches; dashed arrows carry training-only signals."""
    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle="-|>",
            mutation_scale=11,
            linewidth=width,
            color=colour,
            linestyle=(0, (4, 2.5)) if dashed else "-",
            connectionstyle=connection,
            shrinkA=0,
            shrinkB=0,
        )
    )


def _panel_label(ax, x: float, y: float, text: str, colour: str = "#333333") -> None:
    """Bold heading above a group of boxes."""
    ax.text(x, y, text, ha="left", va="bottom", fontsize=10.5, fontweight="bold", color=colour)


def build_figure() -> plt.Figure:
    """Lay out the whole diagram on a 12 x 6 inch canvas whose data units are inches.

    Returns:
        The matplotlib figure (the caller saves and closes it).
    """
    fig = plt.figure(figsize=FIGURE_SIZE_INCHES)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, FIGURE_SIZE_INCHES[0])
    ax.set_ylim(0, FIGURE_SIZE_INCHES[1])
    ax.axis("off")

    ax.text(6.0, 5.72, "SCM: Streaming Content Monitor", ha="center", va="center", fontsize=15, fontweight="bold")
    ax.text(
        6.0,
        5.42,
        "one causal pass judges every prefix of the response, so the monitor can stop a harmful stream early",
        ha="center",
        va="center",
        fontsize=9.5,
        color="#555555",
    )

    stop_index = delay_k_stop_index(EXAMPLE_SCORES, EXAMPLE_THETA, EXAMPLE_K)
    n_tokens = len(EXAMPLE_SCORES)

    # --- Monitored LLM, on the left, and its stream of tokens feeding the monitor.
    llm_x, llm_y, llm_w, llm_h = 0.25, 3.35, 1.55, 0.95
    _box(ax, llm_x, llm_y, llm_w, llm_h, "Monitored LLM\n(streams its\nresponse)", "llm", fontsize=10,
         fontweight="bold")

    token_y, token_h, token_w, gap = 4.62, 0.4, 0.52, 0.08
    prompt_x, prompt_w = 2.15, 0.85
    sep_x, sep_w = prompt_x + prompt_w + gap, 0.5
    _box(ax, prompt_x, token_y, prompt_w, token_h, "prompt", "prompt")
    _box(ax, sep_x, token_y, sep_w, token_h, r"\n\n", "prompt", family="monospace")
    token_centres = []
    first_token_x = sep_x + sep_w + gap
    for i in range(n_tokens):
        x = first_token_x + i * (token_w + gap)
        # Tokens after the stop are never shown to the user: draw them greyed out.
        role = "held" if stop_index is not None and i > stop_index else "token"
        _box(ax, x, token_y, token_w, token_h, f"$t_{i + 1}$", role, fontsize=10.5)
        token_centres.append(x + token_w / 2)
    column_right = first_token_x + n_tokens * (token_w + gap) - gap
    ax.text(column_right + 0.06, token_y + token_h / 2, "...", ha="left", va="center", fontsize=12)
    ax.text(
        (prompt_x + column_right) / 2,
        token_y + token_h + 0.08,
        'monitor input: prompt + "\\n\\n" + response tokens so far',
        ha="center",
        va="bottom",
        fontsize=8.5,
        color="#555555",
    )
    _arrow(ax, (llm_x + llm_w, llm_y + llm_h * 0.8), (prompt_x - 0.05, token_y + token_h / 2),
           connection="arc3,rad=-0.3")
    ax.text(1.62, 4.7, "tokens", fontsize=8.5, color="#555555", ha="center")

    # --- Backbone: every column's hidden state depends on its prefix only.
    backbone_y, backbone_h = 3.3, 0.95
    backbone_w = column_right - prompt_x
    _box(
        ax,
        prompt_x,
        backbone_y,
        backbone_w,
        backbone_h,
        "SCM backbone: causal LM (Qwen2.5 / SmolLM2)\n" + r"$h_t$ depends on tokens $\leq t$ only",
        "backbone",
    )
    all_centres = [prompt_x + prompt_w / 2, sep_x + sep_w / 2, *token_centres]
    for centre in all_centres:
        _arrow(ax, (centre, token_y), (centre, backbone_y + backbone_h), colour=COLOURS["backbone"][1], width=1.0)

    # --- Token scorer under the backbone, one score per response position.
    head_y, head_h = 2.05, 0.7
    _box(
        ax,
        prompt_x,
        head_y,
        backbone_w,
        head_h,
        "Token scorer: Dropout(0.1) + Linear(h, 2)\n" + r"at every position $t$ $\rightarrow$ $c_t$ = P(harmful)",
        "head_tok",
        fontsize=9.5,
    )
    for centre in all_centres:
        _arrow(ax, (centre, backbone_y), (centre, head_y + head_h), colour=COLOURS["head_tok"][1], width=1.0)
    ax.text(prompt_x - 0.08, (backbone_y + head_y + head_h) / 2, r"$h_1 \ldots h_n$", fontsize=9.5,
            va="center", ha="right")

    score_y, score_h = 1.15, 0.45
    for centre, score in zip(token_centres, EXAMPLE_SCORES):
        role = "harmful" if score >= EXAMPLE_THETA else "safe"
        _box(ax, centre - token_w / 2, score_y, token_w, score_h, f"{score:.2f}", role, fontsize=8.5)
        _arrow(ax, (centre, head_y), (centre, score_y + score_h), colour=COLOURS["head_tok"][1], width=1.0)
    ax.text(prompt_x + (sep_x + sep_w - prompt_x) / 2, score_y + score_h / 2, r"$c_t$ (example)", fontsize=9.5,
            va="center", ha="center")

    # --- Holistic scorer beside the backbone: reads the last hidden state only.
    hol_x, hol_w = column_right + 0.4, 1.45
    _box(
        ax,
        hol_x,
        backbone_y,
        hol_w,
        backbone_h,
        "Holistic scorer\nLinear(h, 2, no bias)\n" + r"last token $\rightarrow$ $c_{hol}$",
        "head_hol",
        fontsize=9,
    )
    _arrow(ax, (column_right, backbone_y + backbone_h / 2), (hol_x - 0.03, backbone_y + backbone_h / 2),
           colour=COLOURS["head_hol"][1])
    ax.text((column_right + hol_x) / 2, backbone_y + backbone_h / 2 + 0.06, r"$h_n$", fontsize=9, ha="center",
            va="bottom")

    # --- Training loss (right, top).
    loss_x, loss_w = 8.75, 3.05
    loss_y, loss_h = 3.05, 2.0
    _panel_label(ax, loss_x, loss_y + loss_h + 0.05, "Training loss (dashed arrows)", TRAIN_COLOUR)
    _box(
        ax,
        loss_x,
        loss_y,
        loss_w,
        loss_h,
        r"$\mathcal{L} = \alpha\,\mathrm{CE}_{tok} + (1-\alpha)\,\mathrm{CE}_{hol} + \gamma\,\mathcal{L}_{logic}$"
        "\n\n"
        r"$\mathcal{L}_{logic} = -\log\,(1 - p_{hol} + p_{hol} \cdot \mathrm{max}_t\, p_t)$"
        "\n"
        r"(harmful response $\Rightarrow$ some harmful token)"
        "\n\n"
        r"SCM: $\alpha = 0.6$, $\gamma = 1.0$",
        "loss",
        fontsize=9.5,
    )
    _arrow(ax, (hol_x + hol_w, backbone_y + backbone_h / 2), (loss_x - 0.03, backbone_y + backbone_h / 2),
           colour=TRAIN_COLOUR, dashed=True)
    _arrow(ax, (column_right + 0.05, score_y + score_h), (loss_x + 0.35, loss_y - 0.03),
           colour=TRAIN_COLOUR, dashed=True, connection="arc3,rad=0.25")
    ax.text(7.4, 2.22, r"$c_t$", fontsize=9.5, color=TRAIN_COLOUR, ha="center", va="center")

    # --- Inference: delay-k rule (right, bottom).
    infer_x, infer_w = loss_x, loss_w
    infer_y, infer_h = 0.55, 1.75
    _panel_label(ax, infer_x, infer_y + infer_h + 0.05, "Inference (red arrows)", INFER_COLOUR)
    stop_text = f"stop at $t_{{{stop_index + 1}}}$" if stop_index is not None else "no stop"
    _box(
        ax,
        infer_x,
        infer_y,
        infer_w,
        infer_h,
        r"Delay-$k$ rule: stop when"
        "\n"
        r"$\#\{t : c_t \geq \theta\}$ reaches $k$"
        "\n(cumulative, not consecutive)\n\n"
        rf"example: $\theta = {EXAMPLE_THETA}$, $k = {EXAMPLE_K}$ $\rightarrow$ {stop_text}",
        "infer",
    )
    _arrow(ax, (column_right + 0.05, score_y + score_h / 2), (infer_x - 0.03, score_y + score_h / 2),
           colour=INFER_COLOUR, width=1.6)

    # --- STOP signal back to the monitored LLM, routed below everything else.
    route_y, route_x = 0.3, llm_x + llm_w / 2
    _arrow(ax, (infer_x + infer_w / 2, infer_y), (infer_x + infer_w / 2, route_y), colour=INFER_COLOUR, width=2.0)
    ax.plot([infer_x + infer_w / 2, route_x], [route_y, route_y], color=INFER_COLOUR, linewidth=2.0,
            solid_capstyle="projecting")
    _arrow(ax, (route_x, route_y), (route_x, llm_y - 0.04), colour=INFER_COLOUR, width=2.0)
    ax.text(
        (route_x + infer_x) / 2,
        route_y + 0.08,
        "STOP signal: halt generation (greyed tokens never reach the user)",
        ha="center",
        va="bottom",
        fontsize=9,
        color=INFER_COLOUR,
        fontweight="bold",
    )
    return fig


def render_png(dpi: int = 150) -> bytes:
    """Render the figure to PNG bytes without any timestamp or version metadata.

    Args:
        dpi: resolution; the image is ``12 * dpi`` by ``6 * dpi`` pixels.

    Returns:
        The encoded PNG.
    """
    fig = build_figure()
    buffer = io.BytesIO()
    try:
        # No "Software" entry: the file then depends on the drawing, not on the matplotlib build that wrote it.
        fig.savefig(buffer, format="png", dpi=dpi, facecolor="white", metadata={"Software": None})
    finally:
        plt.close(fig)
    return buffer.getvalue()


def main(args: DrawArguments) -> Path:
    """Draw the figure and write it atomically.

    Args:
        args: output path and resolution.

    Returns:
        The path written.

    Raises:
        ValueError: an output path that is not a .png, or a dpi outside the supported range.
    """
    output = _validate(args)
    png = render_png(args.dpi)
    with atomic_write(output, "wb") as handle:
        handle.write(png)
    print(f"wrote {output} ({len(png) / 1024:.0f} KiB)")
    return output


if __name__ == "__main__":
    main(parse_args())
