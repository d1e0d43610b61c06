"""One truth about the demo: README.md and docs/getting_started.md state its settings only as
generated from DemoConfig and the Makefile, its timings only in README's timing block (which
names the settings it was timed with), and .gitignore covers the folders the docs' commands write.

After changing DemoConfig or the Makefile's demo recipe, regenerate the settings blocks with
``python tests/test_docs.py --fix`` (and re-time the demo: the timing block must be redone by hand).
"""

from __future__ import annotations

import fnmatch
import re
import sys
import textwrap
from pathlib import Path

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
