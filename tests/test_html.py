"""report.html: the report's content with interactive charts, checked in a real headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from planting import marked_input, plant_massive, tiny_model

from massact.html import write_report_html
from massact.html.charts import number_text
from massact.html.page import _json_for_script
from massact.models.loading import load_model
from massact.scan import ScanConfig, scan

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PLANT = {"llama": (1, 3, 11), "gpt2": (2, 3, 20)}  # block, input position of MARK, dim
BOS = 0


class IdsTokenizer:
    """A stand-in tokenizer: the prompt is space-separated ids; `bos` puts id 0 first, as LLaMA's does."""

    def __init__(self, bos: bool) -> None:
        self.bos = bos
        self.all_special_ids = [BOS] if bos else []

    def __call__(self, text, return_tensors="pt", add_special_tokens=True):
        ids = [int(t) for t in text.split()]
        return {"input_ids": torch.tensor([[BOS] * (self.bos and add_special_tokens) + ids])}

    def decode(self, ids):
        return "<s>" if self.bos and ids[0] == BOS else f"<{ids[0]}>"


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def scan_page(request, tmp_path_factory):
    """A planted model's scan folder with report.html; GPT-2 gets a tokenizer that adds a BOS."""
    family = request.param
    block, position, dim = PLANT[family]
    model = tiny_model(family)
    plant_massive(model, block=block, dim=dim)
    bos = family == "gpt2"
    ids = marked_input(10, token=position)
    result = scan(
        load_model(model, tokenizer=IdsTokenizer(bos)), " ".join(map(str, ids[0].tolist())), ScanConfig(keep=block)
    )
    folder = tmp_path_factory.mktemp(f"scan-{family}")
    result.write(folder)  # the scan's own files: scan.json, report.md, figures
    write_report_html(folder, result)
    token = position + int(bos)
    return {"folder": folder, "block": block, "token": token, "dim": dim, "family": family}


def browser_required() -> bool:
    """In CI (`CI` set, or `MASSACT_REQUIRE_BROWSER=1`) a missing browser fails the run instead of skipping."""
    flags = (os.environ.get("MASSACT_REQUIRE_BROWSER", ""), os.environ.get("CI", ""))
    return any(flag.strip().lower() not in ("", "0", "false", "no") for flag in flags)


def no_browser(reason: str) -> None:
    """Skip the browser tests, or fail them where a browser is required."""
    (pytest.fail if browser_required() else pytest.skip)(reason)


@pytest.mark.parametrize(
    ("ci", "required", "expected"),
    [(None, None, False), ("true", None, True), ("false", None, False), (None, "1", True), ("0", "0", False)],
)
def test_a_missing_browser_fails_in_ci(monkeypatch, ci, required, expected):
    for name, value in (("CI", ci), ("MASSACT_REQUIRE_BROWSER", required)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert browser_required() is expected
    with pytest.raises(pytest.fail.Exception if expected else pytest.skip.Exception, match="no browser here"):
        no_browser("no browser here")


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by Selenium, with the console log kept; skipped when not installed (not in CI)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        no_browser("browser tests need Selenium: pip install selenium")
    chromium = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    driver_path = shutil.which("chromedriver") or (CHROMEDRIVER if Path(CHROMEDRIVER).exists() else None)
    if chromium is None or driver_path is None:
        no_browser("browser tests need Chromium and its driver: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def _open(driver, page: Path) -> list[dict]:
    """Open `page` from the file system; the console messages logged while it loaded."""
    driver.get_log("browser")
    driver.get(page.as_uri())
    driver.execute_script("return document.readyState")
    return driver.get_log("browser")


def _hover(driver, element, expect: str) -> str:
    """Move the mouse onto `element`; the chart's hover label once it shows `expect` (or after 5 s)."""
    from selenium.webdriver.common.action_chains import ActionChains

    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    chart = element.find_element("xpath", "ancestor::div[contains(@class, 'js-plotly-plot')]")
    text = ""
    for attempt in range(100):
        if attempt % 20 == 0:  # move off and back on, in case the first move came before the chart settled
            ActionChains(driver).move_to_element_with_offset(chart, 0, 0).move_to_element(element).perform()
        text = driver.execute_script("return arguments[0].querySelector('.hoverlayer').textContent", chart)
        if expect in text:
            break
        time.sleep(0.05)
    return text


def _charts(driver) -> list[dict]:
    return driver.execute_script(
        "return [...document.querySelectorAll('div.chart')].map(g => ({id: g.id, drawn: !!g._fullLayout,"
        " traces: (g._fullData || []).length, height: g.getBoundingClientRect().height,"
        " svg: g.querySelectorAll('svg.main-svg').length}))"
    )


@pytest.mark.slow  # drives a headless Chromium
def test_scan_page_renders_without_console_errors(browser, scan_page):
    folder = scan_page["folder"]
    logs = _open(browser, folder / "report.html")
    assert [e for e in logs if e["level"] == "SEVERE"] == []
    charts = {c["id"]: c for c in _charts(browser)}
    assert set(charts) == {"scan-layerwise", "scan-top-sites", "scan-surface"}
    for chart in charts.values():
        assert chart["drawn"] and chart["traces"] > 0 and chart["svg"] > 0 and chart["height"] > 100
    # the report's text and table are there, and the static figures are replaced by the charts
    text = browser.find_element("tag name", "body").text
    assert "Massive activations" in text and "Per block" in text
    assert browser.execute_script("return document.querySelectorAll('img').length") == 0
    assert "<script src" not in (folder / "report.html").read_text()  # nothing fetched: it works offline


@pytest.mark.slow  # drives a headless Chromium
def test_hover_shows_the_planted_value_exactly_as_in_the_json(browser, scan_page):
    folder, block = scan_page["folder"], scan_page["block"]
    data = json.loads((folder / "scan.json").read_text())
    top = data["blocks"][block]["top"][0]
    assert (top["token"], top["dim"]) == (scan_page["token"], scan_page["dim"])
    raw = (folder / "scan.json").read_text()
    assert f'"value": {number_text(top["value"])}' in raw  # the text the hover must show is the file's own
    _open(browser, folder / "report.html")
    points = browser.find_elements("css selector", "#scan-layerwise .scatterlayer .trace:nth-child(1) path.point")
    assert len(points) == data["num_blocks"]
    label = _hover(browser, points[block], f"value {number_text(top['value'])}")
    token_text = data["tokens"][scan_page["token"]]
    assert f"block {block}" in label
    assert f"token {scan_page['token']} {token_text}" in label
    assert f"dim {scan_page['dim']}" in label
    assert f"value {number_text(top['value'])}" in label


@pytest.mark.slow  # drives a headless Chromium
def test_block_picker_switches_the_tokens_by_dims_view(browser, scan_page):
    folder = scan_page["folder"]
    data = json.loads((folder / "scan.json").read_text())
    last = data["num_blocks"] - 1
    _open(browser, folder / "report.html")
    header = browser.find_element("css selector", "#scan-top-sites .updatemenu-header")
    assert header.text == f"block {scan_page['block']}"  # opens on the first massive block
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", header)
    header.click()
    choice = next(
        b
        for b in browser.find_elements("css selector", "#scan-top-sites .updatemenu-dropdown-button")
        if b.text == f"block {last}"
    )
    choice.click()
    visible = []
    for _ in range(50):
        visible = browser.execute_script(
            "return document.getElementById('scan-top-sites')._fullData.filter(t => t.visible === true)"
            ".map(t => t.name)"
        )
        if visible == [f"block {last}"]:
            break
        time.sleep(0.05)
    assert visible == [f"block {last}"]
    markers = browser.find_elements("css selector", "#scan-top-sites .scatterlayer .trace path.point")
    sizes = [float(m.get_attribute("d").split(",")[0].lstrip("M")) for m in markers]  # the radius in the path
    biggest = markers[sizes.index(max(sizes))]
    top = data["blocks"][last]["top"][0]
    label = _hover(browser, biggest, f"value {number_text(top['value'])}")
    assert f"block {last}" in label and f"value {number_text(top['value'])}" in label


def test_generic_result_embeds_figures_and_charts_its_per_block_table(tmp_path):
    png = tmp_path / "figure.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 16)
    (tmp_path / "report.md").write_text("# a run\n\n| a | b |\n|---|---|\n| `x\\|y` | 2 |\n\n![a figure](figure.png)\n")

    class Result:
        def to_json(self):
            return {"model": "m", "risk": [{"block": i, "error": 0.5 * i, "massive": i} for i in range(4)]}

    page = write_report_html(tmp_path, Result()).read_text()
    assert 'src="data:image/png;base64,' in page and 'src="figure.png"' not in page
    specs = json.loads(page.split('id="massact-charts">')[1].split("</script>")[0])
    (chart,) = specs.values()
    assert [t["name"] for t in chart["data"]] == ["error", "massive"]
    assert chart["data"][0]["y"] == [0.0, 0.5, 1.0, 1.5]
    assert "<td><code>x|y</code></td>" in page


def test_user_text_cannot_end_the_script_element():
    text = _json_for_script({"token": "</script><script>alert(1)</script>"})
    assert "</script>" not in text and json.loads(text) == {"token": "</script><script>alert(1)</script>"}


@pytest.mark.slow  # drives a headless Chromium
def test_atlas_page_compares_models_on_one_depth_axis(browser, tmp_path):
    from massact.atlas import AtlasConfig, AtlasResult

    rows = [
        {"model": "a", "status": "ok", "block_peak_ratio": [10.0, 2000.5, 1800.25, 90.0]},
        {"model": "b/<c>", "status": "ok", "block_peak_ratio": [5.0, 8.0, 123456.789, 100000.0, 7.0, 3.0]},
        {"model": "missing", "status": "failed", "reason": "no such file"},
    ]
    result = AtlasResult(rows=rows, config=AtlasConfig())
    result.write(tmp_path)
    write_report_html(tmp_path, result)
    logs = _open(browser, tmp_path / "report.html")
    assert [e for e in logs if e["level"] == "SEVERE"] == []
    assert [(c["id"], c["traces"]) for c in _charts(browser)] == [("atlas-depth", 2)]
    points = browser.find_elements("css selector", "#atlas-depth .scatterlayer .trace:nth-child(2) path.point")
    assert len(points) == 6
    label = _hover(browser, points[2], "block 2")  # depth 2/5 of the 6-block model
    assert "b/<c>" in label and "block 2" in label and f"peak / median {number_text(123456.789)}" in label


def test_page_without_charts_keeps_its_figures_and_skips_plotly(tmp_path):
    (tmp_path / "figure.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 16)
    (tmp_path / "report.md").write_text("# only text\n\n![a figure](figure.png)\n\n![gone](../outside.png)\n")

    class Result:
        def to_json(self):
            return {"model": "m", "value": 1.0}

    page = write_report_html(tmp_path, Result()).read_text()
    assert page.count('src="data:image/png;base64,') == 1 and "Plotly" not in page and len(page) < 10_000
    assert '<a href="../outside.png">gone</a>' in page  # nothing outside the folder is read into the page


def _choose(driver, chart_id: str, label: str) -> list[str]:
    """Pick `label` in the chart's dropdown; the names of the traces then shown."""
    header = driver.find_element("css selector", f"#{chart_id} .updatemenu-header")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", header)
    header.click()
    buttons = driver.find_elements("css selector", f"#{chart_id} .updatemenu-dropdown-button")
    next(b for b in buttons if b.text == label).click()
    script = f"return document.getElementById('{chart_id}')._fullData.filter(t => t.visible === true).map(t => t.name)"
    for _ in range(50):
        shown = driver.execute_script(script)
        if shown == [label]:
            break
        time.sleep(0.05)
    return shown


@pytest.mark.slow  # drives a headless Chromium
def test_attention_page_picks_block_and_head_and_hovers_a_probability(browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains

    from massact.attention import AttentionConfig, AttentionInput, run
    from massact.models.loading import LoadedModel

    model = tiny_model("llama")
    plant_massive(model, block=1, dim=11)
    ids = marked_input(10, token=0)
    tokens = [f"<{i}>" for i in ids[0].tolist()]
    result = run(LoadedModel(model), AttentionInput(ids, tokens), AttentionConfig(keep_maps=(2,)))
    write_report_html(tmp_path, result)
    logs = _open(browser, tmp_path / "report.html")
    assert [e for e in logs if e["level"] == "SEVERE"] == []
    charts = {c["id"]: c for c in _charts(browser)}
    assert set(charts) == {"attention-heads", "attention-blocks", "attention-maps"}
    assert all(c["drawn"] and c["svg"] > 0 for c in charts.values())
    assert _choose(browser, "attention-maps", "block 2, head 1") == ["block 2, head 1"]
    query, key = 6, 0
    cover = browser.find_element("css selector", "#attention-maps .nsewdrag")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", cover)  # offsets are from its centre
    x, y = browser.execute_script(
        "const l = document.getElementById('attention-maps')._fullLayout;"
        "return [l.xaxis.l2p(arguments[0]), l.yaxis.l2p(arguments[1])]",
        key,
        query,
    )
    size = cover.size
    ActionChains(browser).move_to_element_with_offset(cover, x - size["width"] / 2, y - size["height"] / 2).perform()
    probability = result.sequences[0].maps[2][1, query, key].item()
    label = ""
    for _ in range(100):  # the pointer glides there (hover labels on the way), so wait for the cell's own label
        label = browser.execute_script("return document.querySelector('#attention-maps .hoverlayer').textContent")
        if f"query {query} " in label:
            break
        time.sleep(0.05)
    assert f"query {query} {tokens[query]}" in label and f"key {key} {tokens[key]}" in label
    assert f"p {probability:.4g}" in label


@pytest.mark.slow  # drives a headless Chromium
def test_quant_page_has_a_strategy_picker(browser, tmp_path):
    import massact.quant  # noqa: F401 (registers the quant view, as any quant run has)

    rows = [
        {"scheme": s, "strategy": t, "perplexity": p, "ratio": p / 10.0}
        for s, t, p in [("W8A8", "none", 21.5), ("W8A8", "outlier-tokens", 11.25), ("W4A16", "none", 10.5)]
    ]

    class Result:
        def to_json(self):
            return {"format": "massact-quant/1", "model": "m", "baseline": {"perplexity": 10.0}, "rows": rows}

    write_report_html(tmp_path, Result())
    logs = _open(browser, tmp_path / "report.html")
    assert [e for e in logs if e["level"] == "SEVERE"] == []
    assert [(c["id"], c["traces"]) for c in _charts(browser)] == [("quant-perplexity", 2)]
    assert _choose(browser, "quant-perplexity", "outlier-tokens") == ["outlier-tokens"]
    (bar,) = browser.find_elements("css selector", "#quant-perplexity .barlayer .point path")
    label = _hover(browser, bar, "perplexity 11.25")
    assert "scheme W8A8" in label and "strategy outlier-tokens" in label and "vs unquantized 1.125" in label


def test_the_view_follows_the_kind_field(scan_page):
    """A scan's JSON gets the scan view by its `kind`; the same fields under another kind get the generic view, and
    a JSON without `kind` (written before results carried it) is read by its fields as before."""
    from massact.html import charts_for

    data = json.loads((scan_page["folder"] / "scan.json").read_text())
    assert data["kind"] == "scan"
    ids = {c.id for c in charts_for(data)}
    assert {"scan-layerwise", "scan-top-sites"} <= ids
    assert not {"scan-layerwise", "scan-top-sites"} & {c.id for c in charts_for(data | {"kind": "corpus"})}
    older = {k: v for k, v in data.items() if k != "kind"}
    assert {c.id for c in charts_for(older)} == ids
