"""The architecture figure script: a valid, deterministic PNG of the promised size, and clear errors on bad options."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from scripts import draw_architecture as draw
from utils.decision_rules import delay_k_stop_index

REPO_ROOT = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_dimensions(data: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk, which the PNG format requires to come first."""
    assert data[:8] == PNG_SIGNATURE
    length, chunk_type = struct.unpack(">I4s", data[8:16])
    assert (length, chunk_type) == (13, b"IHDR")
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def default_png(tmp_path_factory) -> bytes:
    output = tmp_path_factory.mktemp("figure") / "SCM.png"
    written = draw.main(draw.DrawArguments(output=str(output)))
    assert written == output
    return output.read_bytes()


def test_default_figure_is_a_12_by_6_inch_png_at_150_dpi(default_png):
    assert png_dimensions(default_png) == (1800, 900)
    assert 30_000 < len(default_png) < 1_000_000


def test_figure_has_drawn_content_on_a_white_background(default_png, tmp_path):
    path = tmp_path / "copy.png"
    path.write_bytes(default_png)
    pixels = matplotlib.image.imread(path)[..., :3]
    white = np.all(pixels > 0.99, axis=-1)
    assert white[0, 0] and white[-1, -1]
    # Boxes, text and arrows cover a real share of the canvas, but not most of it.
    assert 0.10 < 1.0 - white.mean() < 0.60
    # The red of the inference path and STOP signal is present.
    red = (pixels[..., 0] > 0.6) & (pixels[..., 1] < 0.35) & (pixels[..., 2] < 0.35)
    assert red.sum() > 2_000


def test_rendering_is_byte_identical_between_runs(default_png):
    assert draw.render_png(150) == default_png


def test_dpi_scales_the_image(tmp_path):
    output = tmp_path / "small.png"
    draw.main(draw.DrawArguments(output=str(output), dpi=60))
    assert png_dimensions(output.read_bytes()) == (720, 360)


def test_existing_file_is_replaced_without_leftover_temporaries(tmp_path):
    output = tmp_path / "SCM.png"
    output.write_bytes(b"stale")
    draw.main(draw.DrawArguments(output=str(output), dpi=50))
    assert output.read_bytes()[:8] == PNG_SIGNATURE
    assert [p.name for p in tmp_path.iterdir()] == ["SCM.png"]


@pytest.mark.parametrize(
    "output, dpi, message",
    [
        ("figure.jpg", 150, r"path ending in \.png"),
        ("figure.png", 10, r"between 50 and 600"),
        ("figure.png", 2000, r"between 50 and 600"),
    ],
)
def test_bad_options_fail_before_writing(tmp_path, output, dpi, message):
    with pytest.raises(ValueError, match=message):
        draw.main(draw.DrawArguments(output=str(tmp_path / output), dpi=dpi))
    assert list(tmp_path.iterdir()) == []


def test_parser_maps_flags_and_suggests_the_closest_one(capsys):
    args = draw.parse_args(["--output", "x.png", "--dpi", "80"])
    assert (args.output, args.dpi) == ("x.png", 80)
    assert draw.parse_args([]).output == str(REPO_ROOT / "SCM.png")
    with pytest.raises(SystemExit):
        draw.parse_args(["--outptu", "x.png"])
    assert "did you mean --output" in capsys.readouterr().err


def test_worked_example_stops_where_the_figure_says():
    # The inference panel prints "stop at t_4" and greys out t_5: the shared rule must agree.
    assert delay_k_stop_index(draw.EXAMPLE_SCORES, draw.EXAMPLE_THETA, draw.EXAMPLE_K) == 3


def test_command_line_writes_the_figure(tmp_path):
    output = tmp_path / "cli.png"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "draw_architecture.py"), "--output", str(output), "--dpi", "50"],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # the script must find the project's packages from anywhere
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert png_dimensions(output.read_bytes()) == (600, 300)


def test_committed_figure_is_up_to_date(default_png):
    committed = (REPO_ROOT / "SCM.png").read_bytes()
    assert png_dimensions(committed) == (1800, 900)
    assert committed == default_png, "SCM.png is stale: regenerate it with `python scripts/draw_architecture.py`"
