"""Report tables (paper layout, published rows, best-value marking) and the Fig. 4-style PNG."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import torch
from PIL import Image

from medsynth.labels import CLASSES, PAPER_DICE_ORDER
from medsynth.metrics.report import (
    COLUMNS,
    DICE_HEADERS,
    PAPER_TABLE1,
    PAPER_TABLE2,
    comparison_figure,
    format_sections,
    format_table,
    paper_rows,
    section_tables,
    write_report,
)


def test_columns_follow_paper_order():
    assert [c[1] for c in COLUMNS[:3]] == ["FID", "PSNR", "SSIM"]
    assert [c[0] for c in COLUMNS[3:]] == [f"dice/{CLASSES[i].name}" for i in PAPER_DICE_ORDER]
    assert (
        COLUMNS[3][0] == "dice/spleen" and COLUMNS[4][0] == "dice/liver" and COLUMNS[-1][0] == "dice/bladder"
    )
    # published values, spot checks against the paper's text
    assert PAPER_TABLE2["OASIS"]["fid"] == 43.57 and PAPER_TABLE2["OASIS"][
        "dice/gallbladder"
    ] == pytest.approx(0.789)
    assert PAPER_TABLE2["Mask-guided DDPM"]["psnr"] == 16.28
    assert PAPER_TABLE1["50k Edge-guided DDPM"]["dice/inferior_vena_cava"] == pytest.approx(0.737)
    assert len(PAPER_TABLE1) == 9 and len(PAPER_TABLE2) == 7


def test_tables_markdown_csv_latex():
    ours = {
        "test/fid": 9.5,
        "test/psnr": 17.0,
        "test/ssim": 0.7,
        "test/dice/spleen": 0.5,
        "test/num_slices": 7,
    }
    rows = {"Ours": ours, **paper_rows(2)}
    md = format_table(rows, "markdown")
    lines = md.strip().splitlines()
    assert lines[0].split("|")[2].strip() == "FID" and "Bladder" in lines[0]
    ours_line = next(line for line in lines if line.startswith("| Ours"))
    cells = [c.strip() for c in ours_line.strip("|").split("|")]
    assert cells[1:5] == ["**9.50**", "**17.00**", "**0.700**", "50.0"]  # best FID/PSNR/SSIM bold
    assert cells[5] == "-"  # liver missing
    oasis = next(line for line in lines if line.startswith("| OASIS (paper)"))
    assert "**78.9**" in oasis  # best gallbladder Dice of Table 2
    parsed = list(csv.reader(io.StringIO(format_table(rows, "csv"))))
    assert parsed[0] == ["Method", "FID", "PSNR", "SSIM", *DICE_HEADERS]
    assert parsed[1][0] == "Ours" and float(parsed[1][4]) == pytest.approx(50.0) and parsed[1][5] == ""
    sdm = next(r for r in parsed if r[0] == "SDM (paper)")
    assert float(sdm[1]) == 12.68 and float(sdm[3 + 5]) == pytest.approx(
        79.3
    )  # pancreas is the 5th Dice column
    tex = format_table(rows, "latex")
    assert tex.startswith("\\begin{tabular}") and "\\textbf{9.50}" in tex and "Gall\\_bld" in tex
    with pytest.raises(ValueError, match="fmt"):
        format_table(rows, "html")


def test_write_report(tmp_path):
    paths = write_report({"Ours": {"fid": 1.0}}, tmp_path, reference=1)
    assert set(paths) == {"markdown", "csv", "latex"}
    assert "150k Mask-guided DDPM (paper)" in paths["markdown"].read_text()


def test_report_keeps_the_paper_apart_and_shows_only_scored_organs(tmp_path):
    """A run on other data (PSNR 20.99, as the phantom demo) is not bold against the paper's AMOS
    rows nor they against it: the published rows are a table of their own. Dice columns where no
    row of the run scores above 0 are left out (and named); the CSV keeps every column and row."""
    ours = {"psnr": 20.99, "ssim": 0.7, "dice/liver": 0.9, "dice/spleen": 0.0}
    real = {"psnr": float("nan"), "dice/liver": 0.95, "dice/spleen": 0.0}
    paths = write_report({"Ours": ours, "Real": real}, tmp_path, reference=2)
    md = paths["markdown"].read_text()
    first, published = md.split("Published reference", 1)
    assert "(paper)" not in first and "Mask-guided DDPM (paper)" in published
    header = first.splitlines()[0]
    assert "Liv." in header and "Sple." not in header and "FID" not in header  # no FID: no row has one
    assert "**20.99**" in first and "**0.700**" in first and "**95.0**" in first and "**90.0**" not in first
    assert "left out" in first and "Sple." in first.split("left out", 1)[1]
    oasis = next(line for line in published.splitlines() if line.startswith("| OASIS"))
    assert "**78.9**" in oasis  # the best published gallbladder Dice, bold among the published rows
    assert "**16.28**" in published  # the best published PSNR: ours (20.99) is not in that table
    rows = list(csv.reader(io.StringIO(paths["csv"].read_text())))
    assert rows[0][:4] == ["Method", "FID", "PSNR", "SSIM"] and len(rows[0]) == 1 + len(COLUMNS)
    assert [r[0] for r in rows[1:3]] == ["Ours", "Real"] and len(rows) == 3 + len(paper_rows(2))
    tex = paths["latex"].read_text()
    assert tex.count("\\begin{tabular}") == 2 and "\\textbf{20.99}" in tex


def test_comparison_figure(tmp_path):
    masks = torch.zeros(2, 32, 32, dtype=torch.long)
    masks[:, 8:24, 8:24] = 6
    outputs = {"A": torch.rand(2, 1, 32, 32), "B": torch.rand(2, 32, 32)}
    path = comparison_figure(masks, outputs, tmp_path / "fig.png", real=torch.rand(2, 1, 32, 32), dpi=50)
    img = np.asarray(Image.open(path).convert("RGB"))
    # 2 rows x 4 columns of 2-inch panels, and a band below them for the legend
    assert img.shape[1:] == (4 * 2 * 50, 3) and 2 * 2 * 50 < img.shape[0] <= 2 * 2 * 50 + 30
    liver = np.array(CLASSES[6].color)
    assert (
        np.abs(img.reshape(-1, 3).astype(int) - liver).sum(1) < 6
    ).sum() > 100  # the mask is drawn in colour
    with pytest.raises(ValueError, match="B"):
        comparison_figure(masks, {"B": torch.rand(2, 16, 16)}, tmp_path / "bad.png")


def test_comparison_figure_legend_and_titles_fit():
    from medsynth.metrics.report import _comparison_fig

    masks = torch.zeros(2, 32, 32, dtype=torch.long)
    masks[:, 2:30, 2:30] = 16
    masks[0, 8:24, 8:24] = 6
    masks[1, 4:8, 4:8] = 1
    name = "Mask-guided DDPM (phantom demo, 1,200 steps)"
    fig = _comparison_fig(masks, {name: torch.rand(2, 1, 32, 32)}, real=torch.rand(2, 1, 32, 32))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == [
        "spleen",
        "liver",
        "body",
    ]  # classes shown, id order
    for handle, cls in zip(legend.legend_handles, (1, 6, 16)):
        assert np.allclose(handle.get_facecolor()[:3], np.array(CLASSES[cls].color) / 255)
    fig_box = fig.bbox
    for ax in fig.axes[:3]:  # the top row holds the titles
        title, box = ax.title.get_window_extent(renderer), ax.get_window_extent(renderer)
        assert ax.title.get_text().replace("\n", " ") in ("Mask", "Real", name)
        # Each title fits over its own panel (a cut-off title spills past it) and inside the figure.
        assert box.x0 - 2 <= title.x0 and title.x1 <= box.x1 + 2, (ax.title.get_text(), title, box)
        assert title.y1 <= fig_box.y1
    leg_box = legend.get_window_extent(renderer)
    assert leg_box.y0 >= 0 and leg_box.y1 <= min(a.get_window_extent(renderer).y0 for a in fig.axes) + 1


def test_comparison_figure_legend_of_many_long_names_stays_inside():
    """The real-CT figure's case: twelve classes, names up to 19 characters, three columns. The
    legend wraps onto more lines instead of running past the figure's left and right edges."""
    from medsynth.metrics.report import _comparison_fig

    ids = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]  # adrenal glands, gall bladder, ...
    masks = torch.zeros(1, 32, 32, dtype=torch.long)
    for i, c in enumerate(ids):
        masks[0, 2 * i : 2 * i + 2, 2:30] = c
    fig = _comparison_fig(
        masks, {"mask_guided_ddpm": torch.rand(1, 1, 32, 32)}, real=torch.rand(1, 1, 32, 32)
    )
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = fig.legends[0]
    assert len(legend.get_texts()) == len(ids)
    box, fig_box = legend.get_window_extent(renderer), fig.bbox
    assert fig_box.x0 <= box.x0 and box.x1 <= fig_box.x1, (box, fig_box)
    assert box.y0 >= 0 and box.y1 <= min(a.get_window_extent(renderer).y0 for a in fig.axes) + 1


def test_sections_for_frd_memorization_and_hu(tmp_path):
    """Rows with FRD, memorization and HU metrics get their sections (Markdown after the paper
    table, one CSV each) with the logged numbers; rows without them get none."""
    row = {"test/frd": 3.25, "test/fid": 9.5, "test/psnr": 17.0}
    row.update(
        {
            f"test/memorization/pixel/{k}": v
            for k, v in (("copy_rate", 0.5), ("threshold", 0.07), ("synthetic_q50", 0.01), ("real_q50", 0.1))
        }
    )
    row.update(
        {
            f"test/hu/liver/{k}": v
            for k, v in (
                ("real_median", 60.0),
                ("real_q1", 50.0),
                ("real_q3", 70.0),
                ("synthetic_median", 72.0),
                ("synthetic_q1", 61.0),
                ("synthetic_q3", 80.0),
                ("median_error", 12.0),
                ("median_error_window", 0.03),
            )
        }
    )
    tables = section_tables({"Ours": row, "Other": {"psnr": 1.0}})
    assert tables["distances"] == (["Method", "FRD", "FID"], [["Ours", 3.25, 9.5]])
    headers, body = tables["memorization"]
    assert body[0][:4] == ["Ours", "pixel", 0.5, 0.07] and np.isnan(body[0][4])  # q05 not given
    assert tables["hu"][1] == [["Ours", "liver", 60.0, 50.0, 70.0, 72.0, 61.0, 80.0, 12.0, 0.03]]
    md = format_sections({"Ours": row})
    assert "| Ours | liver | 60.0 [50.0, 70.0] | 72.0 [61.0, 80.0] | +12.0 | +0.0300 |" in md
    assert "| Ours | 3.25 | 9.50 |" in md and "|:---|---:|---:|" in md
    paths = write_report({"Ours": row}, tmp_path, reference=None, name="r")
    assert "## Organ statistics in HU" in paths["markdown"].read_text()
    hu = list(csv.DictReader(paths["hu"].open()))
    assert hu[0]["Class"] == "liver" and float(hu[0]["median_error"]) == 12.0
    assert set(paths) == {"markdown", "csv", "latex", "distances", "memorization", "hu"}
    assert section_tables({"Other": {"psnr": 1.0}}) == {} and format_sections({"Other": {"psnr": 1.0}}) == ""


def test_comparison_figure_in_a_models_own_label_set(tmp_path):
    """TotalSegmentator masks (ids up to 118, as `medsynth evaluate` gives for a real-CT model) are
    drawn in that set's colours with its names; with AMOS's table they are refused."""
    from medsynth.labels import get_label_set
    from medsynth.metrics.report import _comparison_fig

    ts = get_label_set("totalseg")
    cls = ts.classes[ts.num_classes - 2]
    masks = torch.zeros(1, 32, 32, dtype=torch.long)
    masks[0, 8:24, 8:24] = cls.index
    outputs = {"A": torch.rand(1, 1, 32, 32)}
    with pytest.raises(ValueError, match="0..16"):
        comparison_figure(masks, outputs, tmp_path / "amos.png")
    fig = _comparison_fig(masks, outputs, label_set=ts)
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == [cls.name.replace("_", " ")]
    assert np.allclose(legend.legend_handles[0].get_facecolor()[:3], np.array(cls.color) / 255)
    path = comparison_figure(masks, outputs, tmp_path / "ts.png", label_set=ts, dpi=50)
    img = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3).astype(int)
    assert (np.abs(img - np.array(cls.color)).sum(1) < 6).sum() > 100  # the mask panel in its colour


def test_comparison_figure_zoom_rows_crop_each_panel_around_the_organs():
    """With ``zoom`` every slice gets a second row holding the same crop of each panel: the crop
    centred on the organ pixels' centroid (body and background left out), here hand-computed."""
    from medsynth.metrics.report import _comparison_fig, zoom_box

    masks = torch.zeros(2, 40, 40, dtype=torch.long)
    masks[:, 2:38, 2:38] = 16  # body: not an organ, does not pull the crop
    masks[0, 4:10, 24:34] = 6  # liver, centroid (6.5, 28.5)
    masks[1, 30:36, 4:8] = 1  # spleen near the corner: the crop is shifted to stay inside
    real, synth = torch.rand(2, 1, 40, 40), torch.rand(2, 1, 40, 40)
    # side round(0.3 * 40) = 12; top-left = centroid - 5.5, rounded, clipped to [0, 28]
    assert zoom_box(masks[0].numpy(), 0.3, CLASSES) == (1, 23, 12)
    assert zoom_box(masks[1].numpy(), 0.3, CLASSES) == (27, 0, 12)
    assert zoom_box(torch.zeros(40, 40, dtype=torch.long).numpy(), 0.5, CLASSES) == (10, 10, 20)
    fig = _comparison_fig(masks, {"A": synth}, real=real, zoom=0.3)
    axes = np.array(fig.axes).reshape(4, 3)  # 2 slices x (slice, crop) rows; mask, real, A
    for r, (top, left) in enumerate([(1, 23), (27, 0)]):
        shown = axes[2 * r + 1][1].images[0].get_array()
        assert np.allclose(shown, real[r, 0, top : top + 12, left : left + 12].numpy())
        shown = axes[2 * r + 1][2].images[0].get_array()
        assert np.allclose(shown, synth[r, 0, top : top + 12, left : left + 12].numpy())
        assert axes[2 * r + 1][0].images[0].get_array().shape == (12, 12, 3)  # the mask, coloured
        (outline,) = axes[2 * r][2].patches  # where the crop comes from, on the full panel
        assert (outline.get_x(), outline.get_y(), outline.get_width()) == (left - 0.5, top - 0.5, 12)
    with pytest.raises(ValueError, match="zoom"):
        _comparison_fig(masks, {"A": synth}, zoom=1.5)
