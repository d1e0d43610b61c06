"""One truth about the demo: README.md and docs/getting_started.md state its settings only as
generated from DemoConfig and the Makefile, its timings only in README's timing block (which
names the settings it was timed with), and .gitignore covers the folders the docs' commands write.

One truth about the benchmarks: the quality and sampler numbers that README.md and
docs/benchmarks.md quote equal the committed result files (benchmarks/results/*/*.json), README's
sampling-speed ranges equal docs/benchmarks.md's table, and links into docs/benchmarks.md land
on a heading.

After changing DemoConfig or the Makefile's demo recipe, regenerate the settings blocks with
``python tests/test_docs.py --fix`` (and re-time the demo: the timing block must be redone by hand).
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from medsynth.demo import QUICK, SAMPLER_NAMES, DemoConfig, settings_markdown  # noqa: E402

DOCS = [ROOT / "README.md", ROOT / "docs" / "getting_started.md"]
SETTINGS = re.compile(r"(<!-- BEGIN demo-settings[^\n]*-->\n)(.*?)(\n<!-- END demo-settings -->)", re.DOTALL)
TIMINGS = re.compile(r"<!-- BEGIN timings[^\n]*-->\n(.*?)\n<!-- END timings -->", re.DOTALL)


def _generated() -> str:
    return textwrap.fill(settings_markdown(makefile=ROOT / "Makefile"), width=96, break_on_hyphens=False)


def _norm(text: str) -> str:
    return " ".join(text.split())


def timing_signature(cfg: DemoConfig | None = None) -> str:
    """The settings a demo timing depends on, as the timing block must state them."""
    c = cfg or DemoConfig()
    return (
        f"{c.image_size}x{c.image_size}, {c.num_train_cases}x{c.depth} training slices, "
        f"width {c.model_channels}, {c.train_steps:,} DDPM steps, {c.segmenter_steps:,} segmenter steps, "
        f"{c.num_steps:,} {c.sampler} sampling steps"
    )


def _outside_blocks(text: str) -> str:
    text = SETTINGS.sub("", text)
    return TIMINGS.sub("", text)


def test_settings_blocks_match_democonfig_and_makefile():
    want = _norm(_generated())
    for doc in DOCS:
        blocks = SETTINGS.findall(doc.read_text())
        assert len(blocks) == 1, f"{doc.name}: needs one demo-settings block"
        assert _norm(blocks[0][1]) == want, (
            f"{doc.name}: the demo-settings block is out of date; run `python tests/test_docs.py --fix`"
        )


def test_timings_are_stated_once_with_the_settings_they_were_taken_with():
    readme = (ROOT / "README.md").read_text()
    blocks = TIMINGS.findall(readme)
    assert len(blocks) == 1, "README.md needs one timings block"
    assert _norm(timing_signature()) in _norm(blocks[0]), (
        "README's timings were taken with other demo settings than DemoConfig's: re-time the demo "
        f"and state '{timing_signature()}' in the block"
    )
    minutes = re.compile(r"\b\d+(\.\d+)?\s*(min|minutes|s)\b")
    for doc in DOCS:
        for para in _outside_blocks(doc.read_text()).split("\n\n"):
            if re.search(r"make (demo|test)|medsynth demo|test suite", para):
                assert not minutes.search(para), f"{doc.name}: a timing outside README's block: {para[:200]}"


def _claims(para: str) -> dict[str, set[str]]:
    return {
        "width": set(re.findall(r"width[ -](\d+)", para)),
        "steps": {
            s.replace(",", "") for s in re.findall(r"(\d[\d,]*) (?:DDPM |sampling |segmenter )?steps", para)
        },
        "samplers": {n for n in SAMPLER_NAMES.values() if n in para},
    }


def test_no_demo_claims_contradict_democonfig():
    """Prose outside the generated block that talks about the demo may not state other settings."""
    c = DemoConfig()
    widths = {str(c.model_channels), str(QUICK["model_channels"])}
    steps = {str(v) for v in (c.train_steps, c.segmenter_steps, c.num_steps)}
    steps |= {str(QUICK[k]) for k in ("train_steps", "segmenter_steps", "num_steps")}
    sampler = SAMPLER_NAMES.get(c.sampler, c.sampler)
    for doc in DOCS:
        for para in _outside_blocks(doc.read_text()).split("\n\n"):
            if not re.search(r"make demo|medsynth demo|the demo\b", para):
                continue
            claims = _claims(para)
            assert claims["width"] <= widths, f"{doc.name}: demo width {claims['width']} in: {para[:300]}"
            assert claims["steps"] <= steps, f"{doc.name}: demo steps {claims['steps']} in: {para[:300]}"
            assert claims["samplers"] <= {sampler}, f"{doc.name}: demo sampler in: {para[:300]}"
            for cmd in re.findall(r"`(medsynth demo[^`]*)`", para):
                if "make demo" in para and "DEMO_ARGS" not in para:
                    assert _norm(cmd) in _norm(settings_markdown(makefile=ROOT / "Makefile")), (
                        f"{doc.name}: `{cmd}` is not what `make demo` runs"
                    )


def test_the_checker_catches_the_old_contradictions():
    """The issue's contradictions, as getting_started.md stated them, fail the checks above."""
    old = "`make demo` trains a mask-guided DDPM (64x64, width 32, 1500 steps) and samples with DPM-Solver++ (20 steps)"
    claims = _claims(old)
    c = DemoConfig()
    assert claims["width"] == {"32"} and str(c.model_channels) != "32"
    assert claims["steps"] == {"1500", "20"} and not claims["steps"] <= {str(c.train_steps), str(c.num_steps)}
    assert claims["samplers"] == {"DPM-Solver++"} != {SAMPLER_NAMES[c.sampler]}


def _ignored(path: str, patterns: list[str]) -> bool:
    parts = path.strip("/").split("/")
    for pat in patterns:
        anchored = pat.startswith("/")
        pat = pat.strip("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if not anchored:
            candidates += parts
        if any(fnmatch.fnmatch(c, pat) for c in candidates):
            return True
    return False


def test_gitignore_covers_documented_outputs():
    patterns = [
        line.strip()
        for line in (ROOT / ".gitignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    outputs = set()
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = doc.read_text()
        outputs |= set(re.findall(r"--output[ =]([A-Za-z_][\w./-]*)", text))
        outputs |= set(re.findall(r"(?:save_dir|dirpath|cache_dir): ([\w./-]+)", text))
        outputs |= set(re.findall(r"save_checkpoint\(\"([^\"]+)\"", text))
    outputs = {o for o in outputs if o != "DIR" and not o.startswith("/")}
    assert {"outputs/demo", "phantom_amos", "synthetic", "report"} <= outputs  # the scan finds them
    missing = sorted(o for o in outputs if not _ignored(o, patterns))
    assert not missing, f".gitignore does not cover {missing}"


# --- benchmarks: README.md and docs/benchmarks.md against the committed result files -------------

BENCH = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "benchmarks" / "results"
# README's short names and docs/benchmarks.md's row labels of the seven methods.
README_NAMES = {
    "conditional": "conditional_ddpm",
    "mask-guided": "mask_guided_ddpm",
    "edge-guided": "edge_guided_ddpm",
    "SDM": "sdm",
    "Pix2Pix": "pix2pix",
    "SPADE": "spade",
    "OASIS": "oasis",
}
DOC_LABELS = {
    "conditional DDPM": "conditional_ddpm",
    "mask-guided DDPM": "mask_guided_ddpm",
    "edge-guided DDPM": "edge_guided_ddpm",
    "SDM": "sdm",
    "Pix2Pix": "pix2pix",
    "SPADE": "spade",
    "OASIS": "oasis",
}
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _load(name: str) -> dict:
    # quality.py writes NaN for the real slices' PSNR; json reads it back as float("nan").
    return json.loads((RESULTS / name).read_text())


def _cells(row: str) -> list[str]:
    return [c.strip() for c in row.replace("**", "").strip().strip("|").split("|")]


def _section(text: str, heading: str) -> str:
    """The text under ``heading`` (a markdown heading line) up to the next heading of its level."""
    level = heading.split(" ")[0]
    start = text.index(heading + "\n")
    rest = text[start + len(heading) + 1 :]
    nxt = re.search(rf"^{level} ", rest, re.MULTILINE)
    return rest[: nxt.start()] if nxt else rest


def _stat(cell: dict, digits: int) -> list[str]:
    """A metric as quality.py's tables print it: the mean, and the SD when it is not 0."""
    out = [f"{cell['mean']:.{digits}f}"]
    return out + [f"{cell['sd']:.{digits}f}"] if cell["sd"] else out


def readme_quality_problems(readme: str, quality: dict) -> list[str]:
    """README's "PSNR at 100 %" list of the quality row against quality.json."""
    row = next((r for r in readme.splitlines() if r.startswith("| quality, all seven methods")), None)
    m = re.search(r"PSNR at 100 %: (.*?) \(class-mean painting (\d+\.\d+)\)", row or "")
    if not m:
        return ["README.md: no quality row with 'PSNR at 100 %: ... (class-mean painting X)'"]
    stated = dict(re.findall(r"([A-Za-z][\w-]*) (\d+\.\d+)", m.group(1)))
    problems = []
    if set(stated) != set(README_NAMES):
        problems.append(f"README.md quality row names {sorted(stated)}, not the seven methods")
    for name, value in stated.items():
        key = README_NAMES.get(name)
        if key is None:
            continue
        want = f"{quality['methods'][key]['1.0']['metrics']['psnr']['mean']:.2f}"
        if value != want:
            problems.append(f"README.md: {name} PSNR {value}, quality.json {want}")
    painting = f"{quality['painting']['psnr']['mean']:.2f}"
    if m.group(2) != painting:
        problems.append(f"README.md: class-mean painting PSNR {m.group(2)}, quality.json {painting}")
    return problems


def quality_table_problems(doc: str, quality: dict) -> list[str]:
    """docs/benchmarks.md's 30-minute table, every number, against quality.json."""
    section = _section(doc, "## Quality: all seven methods at the default 30-minute budget")
    rows = {_cells(r)[0]: _cells(r) for r in section.splitlines() if r.startswith("| ")}
    problems = []
    for label, key in DOC_LABELS.items():
        if label not in rows:
            problems.append(f"docs/benchmarks.md: no 30-minute row '{label}'")
            continue
        ck = [quality["methods"][key][f]["metrics"] for f in ("0.25", "0.5", "1.0")]
        want = [str(quality["methods"][key][f]["step"]) for f in ("0.25", "0.5", "1.0")]
        for metric, digits, with_sd in (
            ("psnr", 2, True),
            ("ssim", 3, False),
            ("background", 3, False),
            ("err/mean", 3, False),
            ("dice/mean", 3, True),
            ("frechet_seg", 4, True),
        ):
            want += [f"{c[metric]['mean']:.{digits}f}" for c in ck]
            if with_sd:
                want += _stat(ck[2][metric], digits)[1:]
            if metric == "err/mean":
                want.append(f"{ck[2]['err/max']['mean']:.3f}")
        got = NUMBER.findall(" ".join(rows[label][2:]))
        if got != want:
            problems.append(f"docs/benchmarks.md 30-minute row '{label}': {got}, quality.json gives {want}")
    for label, ref in (("real slices", quality["real"]), ("class-mean painting", quality["painting"])):
        want = [] if math.isnan(ref["psnr"]["mean"]) else [f"{ref['psnr']['mean']:.2f}"]
        want += [f"{ref['ssim']['mean']:.3f}", f"{ref['background']['mean']:.3f}"]
        want += (
            ["0", "0"]
            if label == "real slices"
            else [f"{ref[k]['mean']:.3f}" for k in ("err/mean", "err/max")]
        )
        want += [f"{ref['dice/mean']['mean']:.3f}", f"{ref['frechet_seg']['mean']:.4f}"]
        got = NUMBER.findall(" ".join(rows.get(label, ["", ""])[2:]))
        if got != want:
            problems.append(f"docs/benchmarks.md 30-minute row '{label}': {got}, quality.json gives {want}")
    return problems


def sampler_table_problems(doc: str, samplers: dict) -> list[str]:
    """docs/benchmarks.md's sampler table, every number and verdict, against samplers.json."""
    section = _section(doc, "## Samplers on a trained model")
    rows = [_cells(r) for r in section.splitlines() if re.match(r"\| (\*\*)?(ddpm|ddim|dpm\+\+)", r)]
    settings = samplers["edge_guided_ddpm_100"]
    problems = (
        []
        if len(rows) == len(settings)
        else [f"docs/benchmarks.md: {len(rows)} sampler rows, JSON {len(settings)}"]
    )
    for row in rows:
        found = [
            s for s in settings if s["sampler"] == row[0].split(" ")[0] and str(s["num_steps"]) == row[1]
        ]
        if not found:
            problems.append(f"docs/benchmarks.md sampler row {row[:2]}: not in samplers.json")
            continue
        s, m = found[0], found[0]["metrics"]
        want = [f"{s['seconds_per_slice']:.3f}", *_stat(m["psnr"], 2), f"{m['background']['mean']:.3f}"]
        want += [*_stat(m["err/mean"], 3), *_stat(m["err/max"], 3), *_stat(m["dice/mean"], 3)]
        want.append(f"{m['frechet_seg']['mean']:.4f}")
        verdict = {"reference": "—"}.get(s["within_2pct"], s["within_2pct"])
        got = NUMBER.findall(" ".join(row[2:-1]))
        if got != want or row[-1] != verdict:
            problems.append(
                f"docs/benchmarks.md sampler row {row[:2]}: {got} {row[-1]}, JSON {want} {verdict}"
            )
    return problems


def dpm_miss_problems(texts: dict[str, str], samplers: dict) -> list[str]:
    """By how much DPM++ misses the organ-error bound, as README and docs/benchmarks.md state it."""
    settings = samplers["edge_guided_ddpm_100"]
    ref = settings[0]["metrics"]["err/mean"]["mean"]
    bound = 1.02 * ref + 0.002  # quality.py's "within 2 %" rule, as samplers.md states it
    misses = [s["metrics"]["err/mean"]["mean"] - bound for s in settings if s["sampler"] == "dpm++"]
    want = f"misses the organ-intensity bound by {min(misses):.4f}-{max(misses):.4f}"
    problems = []
    for name, text in texts.items():
        stated = re.search(r"misses the (?:organ-intensity )?bound by (\d\.\d+-\d\.\d+)", _norm(text))
        if not stated or not want.endswith(stated.group(1)):
            problems.append(f"{name}: DPM++ miss {stated and stated.group(1)}, samplers.json gives {want}")
    if "docs/benchmarks.md" in texts:
        stated = re.search(r"\+ 0\.002 = (\d\.\d+)\)", _norm(texts["docs/benchmarks.md"]))
        if not stated or stated.group(1) != f"{bound:.4f}":
            problems.append(
                f"docs/benchmarks.md: bound {stated and stated.group(1)}, samplers.json {bound:.4f}"
            )
    return problems


# The real-CT tables: each row names its result file, method and checkpoint (fraction of the budget).
REALCT = "docs/benchmarks.md real-CT"
REALCT_TARGETS = ("liver", "spleen", "right_kidney", "left_kidney", "aorta")
REALCT_SETTINGS_ROWS = {
    "the recipe: TotalSegmentator labels, augmented, window 40/400": ("realct_40", "mask_guided_ddpm", "0.5"),
    "AMOS labels (15 organs + body, as the paper)": ("realct_40/settings/amos_20", "mask_guided_ddpm", "1.0"),
    "conditional DDPM, the recipe (its 40-minute run's 50 % checkpoint)": (
        "realct_40",
        "conditional_ddpm",
        "0.5",
    ),
    "conditional DDPM, AMOS labels": ("realct_40/settings/amos_20_conditional", "conditional_ddpm", "1.0"),
    "edge-guided DDPM, the recipe (its 40-minute run's 50 % checkpoint)": (
        "realct_40",
        "edge_guided_ddpm",
        "0.5",
    ),
    "edge-guided DDPM, AMOS labels": (
        "realct_40/settings/amos_20_edge_guided_ddpm",
        "edge_guided_ddpm",
        "1.0",
    ),
    "SDM, the recipe (20 minutes)": ("realct_40/settings/ts_20_sdm", "sdm", "1.0"),
    "SDM, AMOS labels": ("realct_40/settings/amos_20_sdm", "sdm", "1.0"),
    "SPADE, the recipe (its 40-minute run's 50 % checkpoint)": ("realct_40", "spade", "0.5"),
    "SPADE, AMOS labels": ("realct_40/settings/amos_20_spade", "spade", "1.0"),
    "no augmentation": ("realct_40/settings/noaug_20", "mask_guided_ddpm", "1.0"),
}
# Rows checked by hand: another window, so some cells hold the real slices' values in brackets.
REALCT_SETTINGS_UNCHECKED = ("wide window",)


def _organ_hu_cells(m: dict) -> list[str]:
    """The five target organs' HU error cells of a real-CT table row, in its column order."""
    return [x for o in REALCT_TARGETS for x in _stat(m[f"hu/{o}"], 1)]


def realct_table_problems(doc: str, results: dict[str, dict]) -> list[str]:
    """The real-CT section's two tables (every method row at 100 %, and "one setting at a time"),
    every number, against the quality.json files (``results``: folder under benchmarks/results
    -> its quality.json)."""
    section = _section(doc, "## Real CT: one patient at 128x128 (`benchmarks/realct.py`)")
    tables = re.findall(r"(?:^\|.*\n)+", section, re.MULTILINE)
    checked = [tb for tb in tables if tb.startswith(("| row (HU", "| setting"))]
    rows = [_cells(r) for tb in checked for r in tb.splitlines()[2:]]
    problems, seen = ([] if len(checked) == 2 else [f"{REALCT}: {len(checked)} of its 2 tables found"]), set()
    for cells in rows:
        label = cells[0]
        main = re.fullmatch(r"(\w+) \((\d+) steps\)", label)
        if main:
            run = results["realct_40"]["methods"][main.group(1)]["1.0"]
            m = run["metrics"]
            want = _stat(m["psnr"], 2) + _stat(m["ssim"], 3) + _stat(m["hu/abs_max"], 1) + _organ_hu_cells(m)
            want += _stat(m["hu/bone"], 0) + _stat(m["dice/mean"], 3) + _stat(m["frechet_seg"], 4)
            want += _stat(m["frd"], 1) + _stat(m["memorization/copy_rate"], 3)
            steps = main.group(2)
            if steps != str(run["step"]):
                problems.append(f"{REALCT} row '{label}': {steps} steps, quality.json {run['step']}")
            got = NUMBER.findall(" ".join(cells[1:]))
        elif label in REALCT_SETTINGS_ROWS:
            folder, method, fraction = REALCT_SETTINGS_ROWS[label]
            seen.add(label)
            run = results[folder]["methods"][method][fraction]
            m = run["metrics"]
            want = [str(run["step"])] + _stat(m["psnr"], 2) + _stat(m["ssim"], 3) + _organ_hu_cells(m)
            want += [f"{m['hu/abs_max']['mean']:.1f}"] + _stat(m["hu/bone"], 0)
            want += (
                _stat(m["dice/mean"], 3) + _stat(m["frechet_seg"], 4) + _stat(m["memorization/copy_rate"], 3)
            )
            got = NUMBER.findall(" ".join(cells[1:]))
        elif label.startswith(REALCT_SETTINGS_UNCHECKED):
            continue
        elif label == "real slices" or label.startswith("class-mean painting"):
            continue  # reference rows: shared by every run of the case, stated once
        else:
            problems.append(f"{REALCT} row '{label}': no result file is known for it (REALCT_SETTINGS_ROWS)")
            continue
        if got != want:
            problems.append(f"{REALCT} row '{label}': {got}, quality.json gives {want}")
    missing = sorted(set(REALCT_SETTINGS_ROWS) - seen)
    if missing:
        problems.append(f"{REALCT}: no 'one setting at a time' row {missing}")
    return problems


def _realct_results() -> dict[str, dict]:
    folders = {"realct_40", *(f for f, _, _ in REALCT_SETTINGS_ROWS.values())}
    return {f: _load(f"{f}/quality.json") for f in folders}


# The volumes tables: each follows a paragraph naming its result folder; columns by header.
VOLUMES = "docs/benchmarks.md volumes"
VOLUMES_MODES = {"independent (2D)": "independent", "coherent (2D, shared noise)": "coherent", "2.5D": "2.5D"}
#: header -> (summary key, digits, with SD) per number in the cell
VOLUMES_COLUMNS = {
    "adjacent ratio": [("ratio/mean", 2, True)],
    "texture corr d=2 / d=4": [("syn2/mean", 2, False), ("syn4/mean", 2, False)],
    "drift held-out (HU)": [("drift/max", 1, True)],
    "drift whole volume (HU)": [("whole/drift/max", 1, True)],
    "PSNR": [("psnr", 2, True)],
    "organ HU error": [("hu_err/mean", 1, True)],
    "Dice": [("dice/mean", 3, True)],
}


def volumes_table_problems(doc: str, load: Callable[[str], dict]) -> list[str]:
    """docs/benchmarks.md's 2D-vs-2.5D tables, every synthetic row and the real row's texture and
    Dice, against the volumes.json each table's paragraph names (``load``: folder -> its JSON)."""
    section = _section(doc, "### Volumes along z: 2D against 2.5D (`benchmarks/volumes.py`)")
    problems, found = [], 0
    for m in re.finditer(r"(?:^\|.*\n)+", section, re.MULTILINE):
        lines = m.group(0).splitlines()
        if not lines[0].startswith("| mode |"):
            continue
        found += 1
        named = re.findall(r"benchmarks/results/(volumes_\w+)/", section[: m.start()])
        if not named:
            problems.append(f"{VOLUMES}: a table with no result folder named before it")
            continue
        res = load(named[-1])
        header = _cells(lines[0])[1:]
        unknown = [h for h in header if h not in VOLUMES_COLUMNS]
        if unknown:
            problems.append(f"{VOLUMES} {named[-1]}: unknown columns {unknown}")
            continue
        for row in lines[2:]:
            cells = _cells(row)
            label, values = cells[0], cells[1:]
            for head, cell in zip(header, values):
                if label == "real":
                    if head not in ("texture corr d=2 / d=4", "Dice"):
                        continue
                    keys = [("real2/mean", 2), ("real4/mean", 2)] if head != "Dice" else [("dice/mean", 3)]
                    want = [f"{res['real'][k]:.{d}f}" for k, d in keys]
                elif label in VOLUMES_MODES:
                    summary = res["modes"][VOLUMES_MODES[label]]["summary"]
                    want = []
                    for key, d, sd in VOLUMES_COLUMNS[head]:
                        want.append(f"{summary[key]['mean']:.{d}f}")
                        want += [f"{summary[key]['sd']:.{d}f}"] if sd else []
                else:
                    problems.append(f"{VOLUMES} {named[-1]}: unknown row '{label}'")
                    break
                got = NUMBER.findall(cell)
                if got != want:
                    problems.append(
                        f"{VOLUMES} {named[-1]} row '{label}', {head}: {got}, volumes.json {want}"
                    )
    return problems + ([] if found else [f"{VOLUMES}: no table found"])


def _volumes_json(folder: str) -> dict:
    return _load(f"{folder}/volumes.json")


# The phantom protocol with --hu --frd --memorization: one table, rows named by the JSON's keys.
METRICS = "docs/benchmarks.md FRD-beside-FD"
METRICS_FOLDER = "quality_8_metrics"
METRICS_KEYS = (("psnr", 2), ("dice/mean", 3), ("frechet_seg", 4), ("frd", 2))
METRICS_KEYS += (("memorization/copy_rate", 3), ("hu/abs_max", 1))


def metrics_table_problems(doc: str, quality: dict) -> list[str]:
    """The FRD-beside-FD table of "Metrics without downloads", every number, against its quality.json
    (the methods at 100 %; the reference rows without steps; a non-finite value is printed "—")."""
    section = _section(doc, "## Metrics without downloads: FRD stability and the memorization check")
    table = next(
        (t for t in re.findall(r"(?:^\|.*\n)+", section, re.MULTILINE) if t.startswith("| row |")), None
    )
    if table is None:
        return [f"{METRICS}: no table starting '| row |'"]
    problems, seen = [], set()
    refs = {"real slices": quality["real"], "class-mean painting": quality["painting"]}
    for row in table.splitlines()[2:]:
        cells = _cells(row)
        label = cells[0]
        if label in refs:
            m, want = refs[label], []
        elif label in quality["methods"]:
            run = quality["methods"][label]["1.0"]
            m, want = run["metrics"], [str(run["step"])]
        else:
            problems.append(f"{METRICS}: unknown row '{label}'")
            continue
        seen.add(label)
        for key, digits in METRICS_KEYS:
            want += _stat(m[key], digits) if math.isfinite(m[key]["mean"]) else []
        got = NUMBER.findall(" ".join(cells[1:]))
        if got != want:
            problems.append(f"{METRICS} row '{label}': {got}, quality.json gives {want}")
    missing = sorted((set(quality["methods"]) | set(refs)) - seen)
    return problems + ([f"{METRICS}: rows missing {missing}"] if missing else [])


# The downstream study, 2D against 2.5D volumes: one table per segmenter, named by its first header
# cell -> (2D run folder, 2.5D run folder); row label -> (which run, augmentation.json key).
AUGMENT = "docs/benchmarks.md downstream 2D-vs-2.5D"
AUGMENT_TABLES = {"volumes": ("2d", "25d"), "volumes, 3-D segmenter": ("2d_seg3d", "25d_seg3d")}
AUGMENT_ROWS = {
    "N=2 real": (0, "N=2 real"),
    "+ synthetic, 2D coherent": (0, "N=2 real+synthetic"),
    "+ synthetic, 2.5D": (1, "N=2 real+synthetic"),
}


def augmentation_table_problems(doc: str, load: Callable[[str], dict]) -> list[str]:
    """The 2D-vs-2.5D downstream tables (2-D and 3-D segmenter), every mean and SD, against their
    two augmentation.json files each (``load``: run folder -> its JSON); where both runs of a table
    trained the real-only arm, it must be the same in both."""
    section = _section(doc, "### The downstream study (`benchmarks/augmentation.py`)")
    problems = []
    for head, folders in AUGMENT_TABLES.items():
        where = f"{AUGMENT} ({head})"
        table = re.search(rf"^\| {re.escape(head)} \|.*\n(?:^\|.*\n)+", section, re.MULTILINE)
        if table is None:
            problems.append(f"{where}: no table found")
            continue
        lines = table.group(0).splitlines()
        organs = _cells(lines[0])[2:]
        seen = set()
        for row in lines[2:]:
            cells = _cells(row)
            if cells[0] not in AUGMENT_ROWS:
                problems.append(f"{where}: unknown row '{cells[0]}'")
                continue
            seen.add(cells[0])
            run, key = AUGMENT_ROWS[cells[0]]
            res = load(folders[run])["results"][key]
            want = [f"{np.mean(res['mean_dice']):.3f}", f"{np.std(res['mean_dice']):.3f}"]
            for organ in organs:
                want += [
                    f"{np.nanmean(res['per_organ'][organ]):.3f}",
                    f"{np.nanstd(res['per_organ'][organ]):.3f}",
                ]
            got = NUMBER.findall(" ".join(cells[1:]))
            if got != want:
                problems.append(f"{where} row '{cells[0]}': {got}, augmentation.json gives {want}")
        reals = [load(f)["results"].get("N=2 real") for f in folders]  # a run may leave it out (--arms)
        if reals[1] is not None and reals[0] != reals[1]:
            problems.append(f"{where}: the real-only arm differs between the 2D and the 2.5D run")
        missing = sorted(set(AUGMENT_ROWS) - seen)
        problems += [f"{where}: rows missing {missing}"] if missing else []
    return problems


def _augmentation_json(folder: str) -> dict:
    return _load(f"augmentation_volumes/{folder}/augmentation.json")


def test_readme_quality_psnr_equals_quality_json():
    quality = _load("quality_30/quality.json")
    assert readme_quality_problems((ROOT / "README.md").read_text(), quality) == []


def test_benchmark_tables_equal_the_result_files():
    doc = BENCH.read_text()
    assert quality_table_problems(doc, _load("quality_30/quality.json")) == []
    samplers = _load("samplers_edge30/samplers.json")
    assert sampler_table_problems(doc, samplers) == []
    texts = {"README.md": (ROOT / "README.md").read_text(), "docs/benchmarks.md": doc}
    assert dpm_miss_problems(texts, samplers) == []
    assert realct_table_problems(doc, _realct_results()) == []
    assert volumes_table_problems(doc, _volumes_json) == []
    assert metrics_table_problems(doc, _load(f"{METRICS_FOLDER}/quality.json")) == []
    assert augmentation_table_problems(doc, _augmentation_json) == []


def test_the_benchmark_checkers_catch_a_changed_number():
    """One digit changed in README's quality row, in a docs table cell and in the DPM++ miss is found."""
    quality, samplers = _load("quality_30/quality.json"), _load("samplers_edge30/samplers.json")
    readme, doc = (ROOT / "README.md").read_text(), BENCH.read_text()
    assert readme_quality_problems(readme.replace("SDM 19.48", "SDM 19.49"), quality)
    assert readme_quality_problems(readme.replace(", OASIS 17.40", ""), quality)  # a method left out
    assert quality_table_problems(doc.replace("| 494 / 987 / 2056 |", "| 494 / 987 / 2057 |"), quality)
    assert quality_table_problems(doc.replace("0.0388 / 0.0362", "0.0388 / 0.0363"), quality)
    assert sampler_table_problems(
        doc.replace("| 0.120 | 20.00 ± 0.02 |", "| 0.120 | 20.00 ± 0.03 |"), samplers
    )
    assert sampler_table_problems(doc.replace("0.0131 | no |", "0.0131 | yes |", 1), samplers)
    assert dpm_miss_problems({"README.md": readme.replace("0.0002-0.0006", "0.0002-0.0005")}, samplers)
    assert dpm_miss_problems({"docs/benchmarks.md": doc.replace("0.0202)", "0.0203)")}, samplers)
    realct = _realct_results()
    assert realct_table_problems(
        doc.replace("| SPADE, AMOS labels | 1241 | 18.08 |", "| SPADE, AMOS labels | 1241 | 18.09 |"), realct
    )
    assert realct_table_problems(
        doc.replace("| sdm (1212 steps) | 19.27 ± 0.07 |", "| sdm (1213 steps) | 19.27 ± 0.07 |"), realct
    )
    assert realct_table_problems(
        doc.replace("| 938 | 16.66 ± 0.06 |", "| 938 | 16.66 |"), realct
    )  # SD left out
    assert realct_table_problems(doc.replace("| SDM, AMOS labels |", "| SDM with AMOS labels |"), realct)
    assert volumes_table_problems(
        doc.replace("| 1.26 ± 0.03 | 0.03 / 0.05 |", "| 1.26 ± 0.03 | 0.03 / 0.06 |"), _volumes_json
    )
    assert volumes_table_problems(doc.replace("0.508 ± 0.066 |", "0.508 ± 0.067 |"), _volumes_json)
    metrics = _load(f"{METRICS_FOLDER}/quality.json")
    assert metrics_table_problems(doc.replace("| 21.09 ± 0.11 |", "| 21.08 ± 0.11 |"), metrics)
    assert metrics_table_problems(doc.replace("| pix2pix | 4931 |", "| pix2pix | 4932 |"), metrics)
    assert augmentation_table_problems(
        doc.replace("| 0.762 ± 0.034 |", "| 0.762 ± 0.035 |"), _augmentation_json
    )
    assert augmentation_table_problems(doc.replace("| 0.549 ± 0.118 |", "| 0.549 |"), _augmentation_json)
    assert augmentation_table_problems(
        doc.replace("| 0.719 ± 0.025 |", "| 0.720 ± 0.025 |"), _augmentation_json
    )  # the 3-D segmenter's table
    assert volumes_table_problems(
        doc.replace("| 1.24 ± 0.03 | 0.06 / 0.05 |", "| 1.24 ± 0.03 | 0.07 / 0.05 |"), _volumes_json
    )


def test_readme_sampling_speed_ranges_equal_the_docs_table():
    """README's "SDM 1.00-1.07x ..." are the min-max of docs/benchmarks.md's idle runs."""
    section = _section(BENCH.read_text(), "### Sampling cost per step, CPU")
    rows = [_cells(r) for r in section.splitlines() if re.match(r"\| \d+ \|", r)]
    assert len(rows) >= 3, "docs/benchmarks.md: the sampling-speed table was not found"
    row = next(
        r for r in (ROOT / "README.md").read_text().splitlines() if r.startswith("| sampling cost per step")
    )
    for name, col in (("SDM", 6), ("mask-guided", 4), ("edge-guided", 5)):
        values = sorted(float(r[col].rstrip("x")) for r in rows)
        want = f"{name} {values[0]:.2f}-{values[-1]:.2f}x"
        assert want in row, f"README's sampling-speed row should state '{want}' (docs/benchmarks.md's runs)"


def _slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation but '-' and '_' dropped."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_links_into_benchmarks_md_land_on_a_heading():
    doc = BENCH.read_text()
    anchors = {_slug(h) for h in re.findall(r"^#+ (.*)$", doc, re.MULTILINE)}
    assert "quality-all-seven-methods-at-the-default-30-minute-budget" in anchors  # the slugging works
    links = [("docs/benchmarks.md", a) for a in re.findall(r"\]\(#([^)]+)\)", doc)]
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        links += [(path.name, a) for a in re.findall(r"benchmarks\.md#([^)\s]+)", path.read_text())]
    assert len(links) >= 5
    broken = [(where, a) for where, a in links if a not in anchors]
    assert not broken, f"links to headings that docs/benchmarks.md does not have: {broken}"


def _fix() -> None:
    new = _generated()
    for doc in DOCS:
        text = doc.read_text()
        if not SETTINGS.search(text):
            print(f"{doc}: no demo-settings block; add '<!-- BEGIN demo-settings -->' ... END markers")
            continue
        doc.write_text(SETTINGS.sub(lambda m: m.group(1) + new + m.group(3), text))
        print(f"updated {doc}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--fix"]:
        _fix()
    else:
        print(__doc__)
