"""The HTML report as a browser shows it: Debian's Chromium, headless, driven by Playwright.
The page must be whole offline (nothing fetched), draw every outcome's bar at its height and
every lineage node, carry its data intact, and run none of the text it shows."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from qledger.cli import app as cli
from qledger.provenance.render import report_html
from qledger.runs.reference_workflows import BELL
from tests.conftest import ONLY_SQLITE, skip_or_fail
from tests.executor.conftest import Service

HOSTILE = '</script><script>window.pwned = 1</script><img src="x" onerror="window.pwned = 2">'


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    candidates = ("/usr/lib/chromium/chromium", shutil.which("chromium"))  # Debian's binary, or its wrapper
    binary = next((p for p in candidates if p and Path(p).exists()), None)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        binary = None
    if binary is None:
        skip_or_fail("needs Debian's chromium and the playwright package (.ci/run installs them)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=binary, args=["--no-sandbox"])
        yield launched
        launched.close()


def opened(browser: Any, load: Any) -> tuple[Any, list[str], list[str]]:
    """A page after ``load(page)``, with every URL it asked for and every error it reported."""
    page = browser.new_page(viewport={"width": 1024, "height": 800})
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    load(page)
    return page, requests, errors


@ONLY_SQLITE  # the page, not the store
def test_the_report_page_draws_every_bar_and_node_offline(service: Service, browser: Any, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QLEDGER_HOME", str(service.home))
    seeded = [{**BELL, "execute": {**BELL["execute"], "seed_simulator": seed}} for seed in (1, 2)]
    first, second = (service.submit(workflow).run.run_id for workflow in seeded)
    for run in (first, second):
        service.watch(run)
    store = service.app.store.url
    out = tmp_path / "report.html"
    for args in (["--format", "html", "-o", str(out)], ["--format", "json", "-o", str(tmp_path / "r.json")]):
        done = CliRunner().invoke(cli, ["report", first, "--against", second, "--store", store, *args])
        assert done.exit_code == 0, done.output
    expected = json.loads((tmp_path / "r.json").read_text())
    lineage = json.loads(CliRunner().invoke(cli, ["lineage", first, "--store", store]).output)
    page, requests, errors = opened(browser, lambda p: p.goto(out.as_uri()))
    assert requests == [out.as_uri()] and errors == []  # whole offline, and no script error
    assert first in page.title()
    assert page.evaluate("JSON.parse(document.getElementById('report-data').textContent)") == expected
    # Every run's bar for every outcome, each as tall as its probability.
    bars = page.evaluate("""() => [...document.querySelectorAll('figure svg rect')]
        .filter(r => r.querySelector('title'))
        .map(r => [r.querySelector('title').textContent, r.getBoundingClientRect().height])""")
    counts = expected["counts"]
    outcomes = sorted({o for c in counts.values() for o in c})
    assert len(bars) == len(outcomes) * len(counts)
    peak_height = max(h for _, h in bars)
    peak = max(n / sum(c.values()) for c in counts.values() for n in c.values())
    for title, height in bars:
        label, outcome, probability = title.rsplit(" ", 2)
        run = next(r for r in counts if label == f"run {r[:8]}")
        p = counts[run].get(outcome.rstrip(":"), 0) / sum(counts[run].values())
        assert float(probability) == pytest.approx(p, abs=1e-4)
        assert height == pytest.approx(peak_height * p / peak, abs=1.0)  # pixels
    # Every lineage node drawn, inside the page.
    nodes = page.evaluate("""() => [...document.querySelectorAll('figure svg g.node')]
        .map(g => { const b = g.getBoundingClientRect(); return [b.width, b.height, b.right]; })""")
    wanted = sum(len(lineage.get(kind, {})) for kind in ("entity", "activity", "agent"))
    assert len(nodes) == wanted > 0
    width = page.evaluate("document.documentElement.clientWidth")
    assert all(w > 0 and h > 0 and right <= width for w, h, right in nodes)
    page.close()


def test_text_in_the_report_is_shown_never_run(browser: Any) -> None:
    """Every text a report shows can come from a submitter (a failure's message, a result): the
    page must show it as text, and its embedded data must come back whole."""
    environment = {"sdk": {"qiskit": HOSTILE}, "seeds": {}, "transpiler": {}, "backend": {"name": HOSTILE},
                   "shots": 4}
    outcome = {"kind": "deterministic", "error_class": "StepFailed", "step": "python", "message": HOSTILE}
    data = {"run_id": "r-" + HOSTILE, "status": "failed", "outcome": outcome, "environment": environment,
            "result": {"note": HOSTILE}, "counts": {"r-1": {"0": 3, HOSTILE: 1}}}
    page, requests, errors = opened(browser, lambda p: p.set_content(report_html(data, "<svg></svg>")))
    assert page.evaluate("window.pwned") is None and requests == [] and errors == []
    assert page.evaluate("JSON.parse(document.getElementById('report-data').textContent)") == data
    assert HOSTILE in page.inner_text("pre") and HOSTILE in page.title()
    page.close()
