"""The web page at ``/`` of a real server process, driven in headless Chromium (Debian's, through
Playwright): it lists the model versions, streams a generation that equals the HTTP API's
answer, shows the circuits and OpenQASM programs, shows the server's errors, and stops a
generation on the server when the user stops it.

Every test fails on a JavaScript error, a console error the test did not expect (Chromium logs
each 4xx answer as one) or a request for anything that is not on the server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from itertools import pairwise

import httpx
import pytest

from tests.serving.conftest import MAX_TOKENS, metric, wait_idle

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the browser fixture says so
    expect = sync_playwright = None

V1 = "/v2/models/tiny/versions/1"
V2 = "/v2/models/tiny/versions/2"
LABELS = {"model": "tiny", "version": "1"}  # the metric labels of version 1
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 10_000


def _missing(what: str, install: str) -> None:
    """A missing browser fails the tests in CI and skips them elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{what}; CI must run the web page tests")
    pytest.skip(f"{what}: install it: {install}")


@pytest.fixture(scope="session", autouse=True)
def chromium() -> str:
    """Chromium's executable; looked for before the session's servers and export are made
    (autouse, session-scoped), so that a skip does not wait for them."""
    if sync_playwright is None:
        _missing("the playwright package is missing", "pip install -e '.[dev]'")
    configured = os.environ.get("QWTHN_CHROMIUM")
    if configured:
        if not (os.path.isfile(configured) and os.access(configured, os.X_OK)):
            _missing(f"QWTHN_CHROMIUM={configured} is not an executable file", "fix the path")
        return configured
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        _missing("no Chromium (chromium or chromium-browser on PATH)", "apt-get install chromium")
    return found


@pytest.fixture(scope="module")
def browser(chromium):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture
def console_errors() -> list[str]:
    """The page's console errors; a test that expects some takes them out (``_take``)."""
    return []


@pytest.fixture
def page(browser, server, console_errors):
    """The page, loaded in a fresh browser context; fails the test on a JavaScript error, a
    console error left in ``console_errors`` or a request that leaves the server."""
    context = browser.new_context(base_url=server.url)
    context.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"JavaScript error: {e}"))

    def console(message) -> None:
        if message.type == "error":
            console_errors.append(f"{message.text} [{message.location.get('url', '')}]")

    def request(request) -> None:
        if not request.url.startswith((server.url + "/", "data:")):
            problems.append(f"a request that leaves the server: {request.url}")

    page.on("console", console)
    page.on("request", request)
    page.goto("/")
    expect(page.locator("#circuits-panel")).to_have_attribute("data-state", "ready")
    yield page
    context.close()
    assert not problems, problems
    assert not console_errors, f"unexpected console errors: {console_errors}"


def _take(console_errors: list[str], status: int, path: str) -> None:
    """Take out the console error that Chromium logs for a ``status`` answer to ``path``."""
    matching = [e for e in console_errors if f"status of {status}" in e and e.endswith(f"{path}]")]
    assert len(matching) == 1, console_errors
    console_errors.remove(matching[0])


def _fill(page, body: dict) -> None:
    """Fill the form with a GenerateRequest body."""
    page.fill("#prompt", body["prompt"])
    page.fill("#max-new-tokens", str(body["max_new_tokens"]))
    page.set_checked("#do-sample", body.get("do_sample", False))
    if body.get("do_sample"):
        page.fill("#temperature", str(body["temperature"]))
        page.fill("#top-p", str(body["top_p"]))
        page.fill("#seed", str(body["seed"]))


def _choose(page, version: str) -> None:
    page.select_option("#model", label=f"tiny — version {version}")
    panel = page.locator("#circuits-panel")
    expect(panel).to_have_attribute("data-model", f"tiny/{version}")
    expect(panel).to_have_attribute("data-state", "ready")


# Loading.


def test_the_page_shows_the_server_and_its_model_versions(page, client):
    meta = client.get("/v2").json()
    expect(page.locator("#server-name")).to_have_text(meta["name"])
    expect(page.locator("#server-version")).to_contain_text(meta["version"])
    index = client.post("/v2/repository/index").json()
    assert [(m["name"], m["version"]) for m in index] == [("tiny", "1"), ("tiny", "2")]
    expect(page.locator("#model option")).to_have_text(["tiny — version 1", "tiny — version 2"])
    expect(page.locator("#generate")).to_be_enabled()
    expect(page.locator("#stop")).to_be_disabled()
    expect(page.locator("#model-note")).to_be_hidden()
    expect(page.locator("#status")).to_have_attribute("data-state", "idle")
    for path in ("/docs", "/metrics"):
        expect(page.locator(f"header a[href='{path}']")).to_be_visible()
        assert client.get(path).status_code == 200
    # The page and its files are served, and kept out of the API's schema.
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/nope.js").status_code == 404
    paths = client.get("/openapi.json").json()["paths"]
    assert all(p.startswith(("/v2/", "/v1/")) or p == "/v2" for p in paths), list(paths)


def test_a_version_that_cannot_generate_disables_generate_and_says_why(page, console_errors):
    """The server's versions can all generate: the page is given an index where they cannot."""
    index = [
        {"name": "tiny", "version": "1", "state": "READY", "generation": False},
        {"name": "tiny", "version": "2", "state": "UNAVAILABLE", "generation": True},
    ]
    page.route("**/v2/repository/index", lambda route: route.fulfill(json=index))
    page.reload()
    options = ["tiny — version 1 (no generation)", "tiny — version 2 (not ready)"]
    expect(page.locator("#model option")).to_have_text(options)
    expect(page.locator("#model-note")).to_contain_text("does not generate text")
    expect(page.locator("#generate")).to_be_disabled()
    page.keyboard.press("Control+Enter")  # no way around it
    page.select_option("#model", label=options[1])
    expect(page.locator("#model-note")).to_contain_text("is not ready (UNAVAILABLE)")
    expect(page.locator("#generate")).to_be_disabled()
    expect(page.locator("#status")).to_have_attribute("data-state", "idle")
    expect(page.locator("#circuits-panel")).to_have_attribute("data-model", "tiny/2")
    expect(page.locator("#circuits-panel")).to_have_attribute("data-state", "ready")
    _take(console_errors, 404, f"{V2}/qasm")


# Generation.

GENERATIONS = {
    "greedy": {"prompt": "1+2=", "max_new_tokens": 12},
    "sampled": {
        "prompt": "x",
        "max_new_tokens": 12,
        "do_sample": True,
        "temperature": 0.8,
        "top_p": 0.9,
        "seed": 3,
    },
}

# Counts the changes of #output (records) and keeps its text after each batch of them: more
# than one batch means that tokens appeared as they came, not all at the end.
WATCH_OUTPUT = """() => {
    const output = document.getElementById("output");
    window.outputRecords = 0;
    window.outputTexts = [];
    new MutationObserver((records) => {
        window.outputRecords += records.length;
        window.outputTexts.push(output.textContent);
    }).observe(output, { childList: true, characterData: true, subtree: true });
}"""


@pytest.mark.parametrize("case", GENERATIONS)
def test_a_generation_streams_what_the_api_answers(page, client, case):
    body = GENERATIONS[case]
    answer = client.post(f"{V1}/generate", json=body).json()
    assert answer["finish_reason"] == "length"
    assert len(answer["text"]) == answer["completion_tokens"] == 12  # a character a token

    _choose(page, "1")
    _fill(page, body)
    page.evaluate(WATCH_OUTPUT)
    with page.expect_request(f"**{V1}/generate_stream") as sent:
        page.click("#generate")
    assert json.loads(sent.value.post_data) == body
    expect(page.locator("#status")).to_have_attribute("data-state", "done")

    assert page.text_content("#output") == answer["text"]
    texts = page.evaluate("window.outputTexts")
    assert len(texts) > 1, texts
    assert all(b.startswith(a) and len(b) > len(a) for a, b in pairwise(texts)), texts
    assert texts[-1] == answer["text"]
    assert page.evaluate("window.outputRecords") == answer["completion_tokens"]  # a text node each
    expect(page.locator("#output")).to_have_attribute("data-tokens", "12")
    expect(page.locator("#stat-tokens")).to_have_text(str(answer["completion_tokens"]))
    expect(page.locator("#stat-prompt-tokens")).to_have_text(str(answer["prompt_tokens"]))
    expect(page.locator("#stat-finish")).to_have_text(answer["finish_reason"])
    expect(page.locator("#stat-ttft")).to_have_text(re.compile(r"^\d+(\.\d+)? m?s$"))
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#generate")).to_be_enabled()
    expect(page.locator("#stop")).to_be_disabled()


def test_ctrl_enter_generates(page, client):
    body = {"prompt": "abc", "max_new_tokens": 5}
    answer = client.post(f"{V1}/generate", json=body).json()
    _choose(page, "1")
    _fill(page, body)
    page.focus("#prompt")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#status")).to_have_attribute("data-state", "done")
    assert page.text_content("#output") == answer["text"]
    assert page.input_value("#prompt") == "abc"  # the key did not type a line end


# Circuits.

SHOWN_CONFIG = """() => Object.fromEntries(
    [...document.querySelectorAll("#adapter-config div")].map(
        (row) => [row.querySelector("dt").textContent, row.querySelector("dd").textContent]))"""


def test_circuits_and_openqasm_programs_of_each_version(page, client, reference, console_errors):
    layers = list(reference.metadata.circuits)
    config = reference.metadata.adapter_config
    programs = client.get(f"{V1}/qasm").json()["layers"]

    _choose(page, "1")
    expect(page.locator("#adapted-layers code")).to_have_text(layers)
    shown = page.evaluate(SHOWN_CONFIG)
    assert shown["n_qubits"] == str(config["n_qubits"])
    assert shown["n_layers"] == str(config["n_layers"])
    options = page.locator("#layer option").all_text_contents()
    assert sorted(options) == sorted(layers) == sorted(programs)
    expect(page.locator("#qasm-error")).to_be_hidden()
    for layer in (options[0], options[-1]):
        page.select_option("#layer", layer)
        program = page.text_content("#qasm")
        assert program == programs[layer]["program"]
        assert "OPENQASM 3.0;" in program.splitlines()
        assert f"layer: '{layer}'" in program
        expect(page.locator("#qasm-info")).to_contain_text(programs[layer]["file"])

    r = client.get(f"{V2}/qasm")
    assert r.status_code == 404
    message = r.json()["error"]
    assert "no OpenQASM programs" in message
    _choose(page, "2")
    expect(page.locator("#qasm-error")).to_be_visible()
    expect(page.locator("#qasm-error")).to_have_text(message)
    expect(page.locator("#qasm")).to_be_hidden()
    expect(page.locator("#layer-field")).to_be_hidden()
    expect(page.locator("#adapted-layers code")).to_have_text(layers)  # metadata still shown
    _take(console_errors, 404, f"{V2}/qasm")


# Errors and stopping.


def test_an_error_answer_is_shown_with_the_servers_message(page, client, console_errors):
    body = {"prompt": "a", "max_new_tokens": MAX_TOKENS + 300}
    r = client.post(f"{V1}/generate_stream", json=body)
    assert r.status_code == 400
    message = r.json()["error"]
    assert "over this server's limit" in message

    _choose(page, "1")
    _fill(page, body)
    page.click("#generate")
    expect(page.locator("#status")).to_have_attribute("data-state", "error")
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error")).to_have_text(message)
    assert page.text_content("#output") == ""
    expect(page.locator("#generate")).to_be_enabled()  # the user can fix it and try again
    _take(console_errors, 400, f"{V1}/generate_stream")

    page.fill("#max-new-tokens", "3")
    page.click("#generate")
    expect(page.locator("#status")).to_have_attribute("data-state", "done")
    expect(page.locator("#error")).to_be_hidden()


def test_an_error_event_mid_stream_is_shown(page):
    """The server sends ``event: error`` when a generation fails after its first tokens (a
    timeout, say), which a test cannot make it do on cue: the browser is given such a stream,
    with CRLF line ends, in place of the server's."""
    stream = (
        'data: {"token_id":5,"text":"a","index":0}\r\n\r\n'
        'data: {"token_id":6,"text":"<b>","index":1}\r\n\r\n'
        ": a comment\r\n"
        'event: error\r\ndata: {"error":"generation did not finish within 60 s"}\r\n\r\n'
    )
    page.route(
        f"**{V1}/generate_stream",
        lambda route: route.fulfill(status=200, content_type="text/event-stream", body=stream),
    )
    _choose(page, "1")
    _fill(page, {"prompt": "a", "max_new_tokens": 3})
    page.click("#generate")
    expect(page.locator("#status")).to_have_attribute("data-state", "error")
    expect(page.locator("#error")).to_have_text("generation did not finish within 60 s")
    assert page.text_content("#output") == "a<b>"  # text, not markup
    assert page.locator("#output b").count() == 0
    expect(page.locator("#output")).to_have_attribute("data-tokens", "2")


# Clicks Stop from the page itself as soon as the first token is shown: the tiny model makes a
# token in about a millisecond, faster than a click driven from here could follow.
STOP_AT_FIRST_TOKEN = """() => {
    const output = document.getElementById("output");
    const observer = new MutationObserver(() => {
        observer.disconnect();
        window.tokensAtStop = Number(output.dataset.tokens);
        document.getElementById("stop").click();
    });
    observer.observe(output, { childList: true, characterData: true, subtree: true });
}"""

# Keeps the AbortSignal of every fetch: whether the stream's was aborted does not depend on how
# far the response had come (whether Chromium reports the request failed or finished does).
KEEP_FETCH_SIGNALS = """(() => {
    const fetch = window.fetch;
    window.fetchSignals = [];
    window.fetch = (resource, options = {}) => {
        window.fetchSignals.push([String(resource), options.signal ?? null]);
        return fetch(resource, options);
    };
})()"""

STREAM_ABORTED = """(path) => window.fetchSignals
    .filter(([resource]) => resource.endsWith(path))
    .map(([, signal]) => signal !== null && signal.aborted)"""


def test_stop_ends_the_generation_on_the_server(page, client):
    body = {"prompt": "", "max_new_tokens": MAX_TOKENS}  # ends at the context: 127 tokens
    page.add_init_script(KEEP_FETCH_SIGNALS)
    page.reload()
    _choose(page, "1")
    _fill(page, body)
    wait_idle(client, **LABELS)
    before = metric(client, "qwthn_generated_tokens_total", **LABELS)
    page.evaluate(STOP_AT_FIRST_TOKEN)
    page.click("#generate")
    expect(page.locator("#status")).to_have_attribute("data-state", "stopped")
    assert page.evaluate(STREAM_ABORTED, f"{V1}/generate_stream") == [True]
    tokens = int(page.get_attribute("#output", "data-tokens"))
    assert tokens == page.evaluate("window.tokensAtStop") >= 1  # none shown after Stop
    assert len(page.text_content("#output")) == tokens
    expect(page.locator("#stat-finish")).to_have_text("–")
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#stop")).to_be_disabled()
    expect(page.locator("#generate")).to_be_enabled()
    # The generation left the server before its end (127 tokens): the stream answers with
    # "Connection: close", so Chromium drops the connection instead of reading on to reuse it.
    wait_idle(client, **LABELS)
    assert metric(client, "qwthn_generated_tokens_total", **LABELS) - before < 127
