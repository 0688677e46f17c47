"""The dashboard (`/ui`) and the API reference (`/docs`) in a real headless Chromium against `tunewright serve`.

One server (`--trainers 0`) for the module. The job test opens a queued job's page before any worker runs, then
starts one `tunewright worker`: every point the loss chart draws comes from the live event stream. A screenshot
of the job page is kept under tests/artifacts/.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest
from fixtures.browser import screenshot
from fixtures.server import VENV_BIN, LiveServer, start_server, stop_server
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.browser]

ASSETS = Path(__file__).resolve().parent.parent / "assets"
TINY = "tiny-llama"
EPOCHS = 4
STEPS = 3 * EPOCHS  # valid_chat.jsonl: 10 examples in batches of 4
LOSS_STROKE = (37, 99, 235)  # #2563eb, the training loss series in app.js


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Iterator[LiveServer]:
    """`tunewright serve --trainers 0` with the tiny model; the test starts its worker itself."""
    env = {"TUNEWRIGHT_BASE_MODELS": f"{TINY}={tiny_dir}"}
    live, process = start_server(tmp_path_factory.mktemp("dashboard"), env)
    yield live
    stop_server(process)


def wait_for(browser: Any, condition: Callable[[Any], Any], timeout: float = 20) -> Any:
    """Poll `condition(browser)` every 50 ms until it is truthy; its value."""
    return WebDriverWait(browser, timeout, poll_frequency=0.05).until(condition)


def text_of(browser: Any, css: str) -> str:
    """The text of the first element matching `css`, or '' when there is none."""
    found = browser.find_elements(By.CSS_SELECTOR, css)
    return found[0].text if found else ""


def points(browser: Any) -> int:
    """How many training-loss points the loss chart says it drew."""
    return int(browser.find_element(By.ID, "loss-chart").get_attribute("data-points") or 0)


def stroke_pixels(browser: Any) -> int:
    """Pixels of the loss chart's canvas in the training-loss colour: what the chart really drew."""
    return browser.execute_script(
        """
        const canvas = document.querySelector('#loss-chart canvas');
        if (!canvas) return 0;
        const [r, g, b] = arguments[0];
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let n = 0;
        for (let i = 0; i < data.length; i += 4) {
          if (data[i + 3] > 200 && Math.abs(data[i] - r) < 24 && Math.abs(data[i + 1] - g) < 24
              && Math.abs(data[i + 2] - b) < 24) n += 1;
        }
        return n;
        """,
        list(LOSS_STROKE),
    )


def sign_in(browser: Any, server: LiveServer, key: str) -> None:
    """Open the dashboard signed out and sign in with `key` through the form."""
    browser.get(server.url + "/ui/")
    browser.execute_script("window.sessionStorage.clear()")
    browser.get(server.url + "/ui/")
    field = wait_for(browser, lambda b: b.find_element(By.ID, "api-key"))
    field.send_keys(key)
    browser.find_element(By.CSS_SELECTOR, "#sign-in button[type=submit]").click()
    wait_for(browser, lambda b: b.find_element(By.ID, "nav").is_displayed())


def assert_key_only_in_session_storage(browser: Any, key: str) -> None:
    """The key is in this tab's session storage and nowhere a URL, cookie or local storage would keep it."""
    assert key not in browser.current_url
    assert browser.execute_script("return window.sessionStorage.getItem('tunewright.key')") == key
    assert browser.execute_script("return window.localStorage.length") == 0
    assert browser.execute_script("return document.cookie") == ""
    urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert not [url for url in urls if key in url]


def assert_only_same_origin(browser: Any, server: LiveServer) -> None:
    """Every resource the page loaded came from the server itself (or inline `data:`), and the console shows no
    error: no request refused by the Content-Security-Policy, no script error, no failed request."""
    origin = urlsplit(server.url).netloc
    urls = browser.execute_script(
        "return [location.href, ...performance.getEntriesByType('resource').map(e => e.name)]"
    )
    elsewhere = [url for url in urls if not url.startswith("data:") and urlsplit(url).netloc != origin]
    assert not elsewhere
    errors = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors


def test_a_job_page_draws_its_loss_chart_from_live_events(browser: Any, server: LiveServer) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key=server.key, max_retries=0)
    training = client.files.create(
        file=("train.jsonl", (ASSETS / "valid_chat.jsonl").read_bytes()), purpose="fine-tune"
    )
    job = client.fine_tuning.jobs.create(
        model=TINY,
        training_file=training.id,
        validation_file=training.id,
        suffix="dash",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": EPOCHS, "batch_size": 4}}},
    )

    sign_in(browser, server, server.key)
    assert_key_only_in_session_storage(browser, server.key)
    row = wait_for(browser, lambda b: b.find_element(By.CSS_SELECTOR, f"tr[data-job='{job.id}']"))
    assert row.get_attribute("data-status") in {"validating_files", "queued"}
    browser.find_element(By.CSS_SELECTOR, "[data-status=succeeded].chip").click()  # status filter
    wait_for(browser, lambda b: not b.find_elements(By.CSS_SELECTOR, f"tr[data-job='{job.id}']"))
    browser.find_element(By.CSS_SELECTOR, "[data-status=all].chip").click()
    wait_for(browser, lambda b: b.find_element(By.CSS_SELECTOR, f"tr[data-job='{job.id}'] a")).click()

    # The page is open and its stream live before any worker runs: nothing drawn yet.
    wait_for(browser, lambda b: b.find_element(By.ID, "stream-state").get_attribute("data-state") == "live")
    assert points(browser) == 0
    assert "No metrics yet" in text_of(browser, "#loss-chart")

    worker = subprocess.Popen(
        [str(VENV_BIN / "tunewright"), "worker", "--max-jobs", "1", "--exit-when-idle"],
        env=server.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        seen: list[int] = []

        def done(b: Any) -> bool:
            seen.append(points(b))
            return b.find_element(By.ID, "stream-state").get_attribute("data-state") == "done"

        wait_for(browser, done, timeout=120)
        _, stderr = worker.communicate(timeout=60)
        assert worker.returncode == 0, stderr.decode()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()

    # Every step's loss arrived over the stream and was drawn, while the job ran.
    assert points(browser) == STEPS
    assert any(0 < n < STEPS for n in seen), seen
    assert stroke_pixels(browser) > 200
    loss_chart = browser.find_element(By.ID, "loss-chart")
    assert loss_chart.get_attribute("data-points-full-valid-loss") == str(EPOCHS)  # the whole file, each epoch end
    assert browser.find_element(By.ID, "accuracy-chart").get_attribute("data-points") == str(STEPS)
    metrics_events = browser.find_elements(By.CSS_SELECTOR, "#events li[data-type=metrics]")
    assert len(metrics_events) == STEPS
    # The job's status and checkpoints follow the stream's end.
    wait_for(browser, lambda b: b.find_element(By.ID, "job-status").get_attribute("data-status") == "succeeded")
    wait_for(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "#checkpoints-body tr[data-step]")) == 3)
    steps = [r.get_attribute("data-step") for r in browser.find_elements(By.CSS_SELECTOR, "#checkpoints-body tr")]
    assert steps == [str(STEPS), str(STEPS - 3), str(STEPS - 6)]
    # The forgetting check: its probe loss at each checkpoint, charted and in the table against the base model's.
    assert loss_chart.get_attribute("data-points-probe-loss") == str(EPOCHS)
    latest = client.fine_tuning.jobs.checkpoints.list(job.id).data[0].metrics.to_dict()
    probe, base = latest["probe_loss"], latest["probe_loss_base"]
    assert text_of(browser, f"#checkpoints-body tr[data-step='{STEPS}'] td.probe") == (
        f"{probe:.4f} ({(probe - base) / base * 100:+.1f}%)"
    )
    fine_tuned = client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
    assert fine_tuned in text_of(browser, "#job-details")
    browser.execute_script("document.querySelector('.charts').scrollIntoView()")
    screenshot(browser, "dashboard-job.png")
    assert_only_same_origin(browser, server)

    browser.find_element(By.CSS_SELECTOR, "#nav a[href='#/files']").click()
    assert wait_for(browser, lambda b: b.find_element(By.CSS_SELECTOR, f"tr[data-file='{training.id}']"))
    browser.find_element(By.CSS_SELECTOR, "#nav a[href='#/models']").click()
    assert wait_for(browser, lambda b: b.find_element(By.CSS_SELECTOR, f"tr[data-model='{fine_tuned}']"))
    assert_key_only_in_session_storage(browser, server.key)

    # The usage page, for an organization admin key: the project's trained tokens.
    admin_key = server.cli("keys", "create", "--org", "default", "--admin").strip().splitlines()[-1]
    sign_in(browser, server, admin_key)
    usage_row = wait_for(browser, lambda b: b.find_element(By.CSS_SELECTOR, "#usage tbody tr"))
    trained = client.fine_tuning.jobs.retrieve(job.id).trained_tokens
    assert f"{trained:,}" in usage_row.text
    screenshot(browser, "dashboard-usage.png")
    assert_only_same_origin(browser, server)


def test_the_api_reference_renders_every_operation_from_local_assets(browser: Any, server: LiveServer) -> None:
    browser.get(server.url + "/ui/")
    browser.execute_script("window.sessionStorage.setItem('tunewright.key', arguments[0])", server.key)
    browser.get(server.url + "/docs")
    wait_for(browser, lambda b: b.find_element(By.ID, "swagger-ui").get_attribute("data-ready") == "true")
    # The dashboard's key (this tab's session storage) is the reference's Bearer key for "Try it out".
    authorized = browser.execute_script("return window.tunewrightDocs.authSelectors.authorized().toJS()")
    assert authorized["bearer"]["value"] == server.key
    operations = wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
    shown = {element.get_attribute("data-path") for element in operations}
    assert {"/v1/chat/completions", "/v1/completions", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/events"} <= shown
    assert shown == set(httpx.get(server.url + "/openapi.json").json()["paths"])
    screenshot(browser, "api-reference.png")
    assert_only_same_origin(browser, server)


def test_a_wrong_key_is_refused_and_never_kept(browser: Any, server: LiveServer) -> None:
    browser.get(server.url + "/ui/")
    browser.execute_script("window.sessionStorage.clear()")
    browser.get(server.url + "/ui/#/jobs")
    field = wait_for(browser, lambda b: b.find_element(By.ID, "api-key"))
    field.send_keys("sk-proj-not-a-key")
    browser.find_element(By.CSS_SELECTOR, "#sign-in button[type=submit]").click()
    wait_for(browser, lambda b: "Incorrect API key" in text_of(b, "#sign-in-status"))
    assert "sk-proj" not in browser.current_url
    assert browser.execute_script("return window.sessionStorage.getItem('tunewright.key')") is None
