"""The standalone page in a real browser (Debian's chromium + chromedriver through Selenium; nothing is
downloaded): a wrong folder shows an error, a saved config loads, Scan shows the report, a caption edit
reaches the disk, a run on the tiny model shows progress and a growing loss curve, survives a page reload,
refuses a second Start, stops and saves, its LoRA is listed, Resize re-ranks it and a Grid of it is shown.
Screenshots of each stage go to $LORA_TRAINER_SCREENSHOTS/gradio-<version>/ (default: the test's tmp folder)."""
from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
import yaml

CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HAVE_BROWSER = os.path.exists(CHROMEDRIVER) and os.path.exists(CHROMIUM)
if not HAVE_BROWSER and os.environ.get("LORA_TRAINER_REQUIRE_BROWSER"):
    raise RuntimeError("the browser tests need Debian's chromium and chromium-driver, and CI requires them")
pytestmark = pytest.mark.skipif(not HAVE_BROWSER,
                                reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
                                       "chromium-driver; .ci/run installs them)")
pytest.importorskip("selenium")
pytest.importorskip("gradio")

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

STEPS = 400  # long enough to reload mid-run; the test stops it early
NAME = "ui_browser"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chrome-profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture
def app(tmp_path):
    from lora_trainer.service import StandaloneService
    from lora_trainer.ui.app import launch

    # The training thread shares 2 cores with the server and the browser: one torch thread avoids
    # oversubscription (two spinning OpenMP threads on a busy machine ran the tiny model ~20x slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    backend = StandaloneService(str(tmp_path / "runs"))
    port = free_port()
    demo = launch("127.0.0.1", port, backend, block=False, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", backend
    finally:
        if backend._queue is not None:
            backend.job_queue().runner.close(120)
        backend.stop()
        backend.jobs.wait(120)
        demo.close()
        torch.set_num_threads(threads)


class Page:
    """Small helpers over the page's elem_ids; every wait is explicit."""

    def __init__(self, driver, shots: Path):
        self.d = driver
        self.shots = shots
        self.n = 0

    def el(self, css: str):
        return self.d.find_element(By.CSS_SELECTOR, css)

    def wait(self, condition, timeout: float = 60, what: str = ""):
        # gradio re-renders HTML outputs: an element found a moment ago may be gone (retry, don't fail)
        return WebDriverWait(self.d, timeout, poll_frequency=0.25, ignored_exceptions=[StaleElementReferenceException]
                             ).until(lambda d: condition(), message=what)

    def text_input(self, elem_id: str):
        return self.el(f"#{elem_id} textarea, #{elem_id} input")

    def type(self, elem_id: str, text: str) -> None:
        box = self.text_input(elem_id)
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.DELETE)
        box.send_keys(text)

    def click(self, elem_id: str) -> None:
        button = self.el(f"#{elem_id}")
        self.d.execute_script("arguments[0].scrollIntoView({block: 'center'});", button)
        button.click()

    def tick(self, elem_id: str) -> None:
        """Click a gr.Checkbox's box itself: its block's centre is empty space in gradio 3.41 (the label sits
        at the top of a block as tall as the row's buttons), so `click` there toggles nothing."""
        box = self.el(f"#{elem_id} input[type=checkbox]")
        self.d.execute_script("arguments[0].scrollIntoView({block: 'center'});", box)
        box.click()

    def open_accordion(self, elem_id: str) -> None:
        """Open a closed gr.Accordion by clicking its label row (`.label-wrap` in gradio 3.41 and later)."""
        label = self.el(f"#{elem_id} .label-wrap")
        self.d.execute_script("arguments[0].scrollIntoView({block: 'center'});", label)
        label.click()

    def attr(self, css: str, name: str):
        found = self.d.find_elements(By.CSS_SELECTOR, css)
        return found[0].get_attribute(name) if found else None

    def text(self, css: str) -> str:
        found = self.d.find_elements(By.CSS_SELECTOR, css)
        return found[0].text if found else ""

    def shot(self, name: str, scroll_to: str = "") -> None:
        if scroll_to:
            self.d.execute_script("arguments[0].scrollIntoView({block: 'start'});", self.el(scroll_to))
        self.n += 1
        self.d.save_screenshot(str(self.shots / f"{self.n:02d}-{name}.png"))


def _status(page: Page) -> tuple:
    css = "#lora_trainer_run_status .lt-status"
    return page.attr(css, "data-state"), int(page.attr(css, "data-step") or 0)


def _points(page: Page) -> int:
    return int(page.attr("#lora_trainer_loss .lt-chart", "data-points") or 0)


def test_the_page_end_to_end(tmp_path, tiny_model_dir, browser, app):
    from lora_trainer.data.captions import read_metadata_csv
    from lora_trainer.tiny import make_shapes_dataset

    url, backend = app
    import gradio

    base = Path(os.environ.get("LORA_TRAINER_SCREENSHOTS") or tmp_path / "screenshots")
    shots = base / f"gradio-{gradio.__version__}"
    shots.mkdir(parents=True, exist_ok=True)
    data = make_shapes_dataset(tmp_path / "data", n=8)
    out = tmp_path / "runs" / NAME
    config_file = tmp_path / "browser.yaml"
    config_file.write_text(yaml.safe_dump({
        "train_data_dir": str(data), "base_model": str(tiny_model_dir), "output_dir": str(out),
        "output_name": NAME, "resolution": 64, "min_bucket_reso": 64, "max_bucket_reso": 128, "lora_rank": 4,
        "batch_size": 2, "max_steps": STEPS, "learning_rate": 1e-3, "seed": 0, "device": "cpu"}))
    page = Page(browser, shots)

    browser.get(url)
    page.wait(lambda: page.d.find_elements(By.CSS_SELECTOR, "#lora_trainer_run_status .lt-status"), 60, "page")
    page.shot("page-loaded")

    # A folder that does not exist: an error on the page (and the server keeps serving: the rest of the test).
    page.type("lora_trainer_cfg_train_data_dir", str(tmp_path / "no-such-folder"))
    page.click("lora_trainer_scan")
    page.wait(lambda: "does not exist" in page.text("#lora_trainer_dataset_msg .lt-msg-error"), 30, "folder error")
    page.shot("missing-folder-error", "#lora_trainer_dataset")

    # Load a saved YAML config (as the CLI reads it): it fills the form, the dataset folder included.
    page.type("lora_trainer_config_path", str(config_file))
    page.click("lora_trainer_load_config")
    page.wait(lambda: "loaded" in page.text("#lora_trainer_config_msg"), 30, "config loaded")
    page.wait(lambda: page.text_input("lora_trainer_cfg_max_steps").get_attribute("value") == str(STEPS), 10)
    page.wait(lambda: page.text_input("lora_trainer_cfg_train_data_dir").get_attribute("value") == str(data), 10)
    page.shot("config-loaded", "#lora_trainer_training")

    # Scan: the report (8 images, ready to train) and the gallery.
    page.click("lora_trainer_scan")
    page.wait(lambda: page.attr("#lora_trainer_report .lt-report", "data-images") == "8", 60, "report")
    assert page.attr("#lora_trainer_report .lt-report", "data-can-train") == "1"
    page.wait(lambda: page.d.find_elements(By.CSS_SELECTOR, "#lora_trainer_gallery img"), 30, "gallery")
    page.shot("scanned", "#lora_trainer_dataset")

    # Edit the first image's caption and find it on disk.
    original = read_metadata_csv(data / "metadata.csv")["00_red_circle.png"]
    page.wait(lambda: page.text_input("lora_trainer_caption").get_attribute("value") == original, 30, "caption")
    edited = "a red circle, edited in the browser"
    page.type("lora_trainer_caption", edited)
    page.click("lora_trainer_save_caption")
    page.wait(lambda: "saved the caption" in page.text("#lora_trainer_dataset_msg"), 60, "caption saved")
    assert read_metadata_csv(data / "metadata.csv")["00_red_circle.png"] == edited
    page.shot("caption-saved", "#lora_trainer_dataset")

    # Start: progress, and a loss curve that grows.
    page.click("lora_trainer_start")
    page.wait(lambda: _status(page)[0] == "running" and _status(page)[1] >= 1, 120, "training started")
    first = page.wait(lambda: _points(page), 60, "loss curve")
    page.wait(lambda: _points(page) > first, 60, "loss curve updates")
    page.click("lora_trainer_start")
    page.wait(lambda: "already running" in page.text("#lora_trainer_run_msg"), 30, "second start refused")
    page.shot("running", "#lora_trainer_run")

    # Reload mid-run: the page shows the server's job, still progressing.
    step_before = page.wait(lambda: _status(page)[1], 10)
    assert step_before < STEPS, "the run finished before the reload; make it longer"
    browser.refresh()
    page.wait(lambda: _status(page)[0] in ("running", "stopping", "finished")
              and _status(page)[1] > step_before, 60, "running job after reload")
    page.shot("after-reload", "#lora_trainer_run")

    # Stop and save: the LoRA is written and listed.
    page.click("lora_trainer_stop")
    page.wait(lambda: _status(page)[0] in ("stopped", "finished"), 120, "stopped")
    page.wait(lambda: page.d.find_elements(By.CSS_SELECTOR, f'#lora_trainer_results tr[data-name="{NAME}"]'),
              30, "result listed")
    assert (out / f"{NAME}.safetensors").is_file()
    assert backend.status().lora_path == str(out / f"{NAME}.safetensors")
    page.shot("result-listed", "#lora_trainer_results_section")

    # Resize it from the Tools: the relative error is shown, the file lands beside the LoRA and is listed.
    page.wait(lambda: page.attr("#lora_trainer_result_pick input", "value") == NAME, 30, "LoRA picked")
    page.open_accordion("lora_trainer_tools_box")
    page.wait(lambda: page.text_input("lora_trainer_resize_rank").is_displayed(), 10, "tools open")
    page.type("lora_trainer_resize_rank", "2")
    page.click("lora_trainer_resize_run")
    page.wait(lambda: page.attr("#lora_trainer_tools_msg .lt-msg", "data-kind"), 60, "resize message")
    assert page.attr("#lora_trainer_tools_msg .lt-msg", "data-kind") == "ok", page.text("#lora_trainer_tools_msg")
    assert 0.0 <= float(page.attr("#lora_trainer_tools_msg .lt-msg", "data-error")) < 1.0
    assert (out / f"{NAME}_r2.safetensors").is_file()
    page.wait(lambda: page.d.find_elements(By.CSS_SELECTOR, f'#lora_trainer_results tr[data-name="{NAME}_r2"]'),
              30, "resized LoRA listed")
    page.shot("resized", "#lora_trainer_tools_box")

    # A small grid of it (1 LoRA x 2 weights at 64 px): shown on the page, saved beside the LoRA.
    page.open_accordion("lora_trainer_grid_box")
    page.wait(lambda: page.text_input("lora_trainer_grid_prompt").is_displayed(), 10, "grid open")
    for box, text in (("lora_trainer_grid_prompt", "a red circle"), ("lora_trainer_grid_weights", "0.5,1"),
                      ("lora_trainer_grid_size", "64"), ("lora_trainer_grid_steps", "2")):
        page.type(box, text)
    page.click("lora_trainer_grid_run")
    page.wait(lambda: page.attr("#lora_trainer_grid_msg .lt-msg", "data-kind"), 120, "grid message")
    assert page.attr("#lora_trainer_grid_msg .lt-msg", "data-columns") == "2", page.text("#lora_trainer_grid_msg")
    assert Path(page.attr("#lora_trainer_grid_msg .lt-msg", "data-path")).parent == out
    page.wait(lambda: page.d.find_elements(By.CSS_SELECTOR, "#lora_trainer_grid_image img"), 30, "grid shown")
    page.shot("grid", "#lora_trainer_grid_box")


FAKE_WEBUI_PAGE = """<html><body>
<div id="tab_txt2img"><div id="txt2img_prompt"><textarea>a cat, </textarea></div></div>
<div id="lora_trainer"><button id="lora_trainer_poll" onclick="window.polls = (window.polls || 0) + 1">poll</button>
</div></body></html>"""


def test_page_script_polls_while_visible_and_sends_to_txt2img(tmp_path, browser):
    """javascript/lora_trainer.js on a stand-in for the WebUI page (gradioApp, switch_to_txt2img)."""
    from lora_trainer.ui.app import JS_FILE

    page_file = tmp_path / "webui.html"
    page_file.write_text(FAKE_WEBUI_PAGE, encoding="utf-8")
    browser.get(page_file.as_uri())
    browser.execute_script("""
        window.gradioApp = () => document;
        window.switch_to_txt2img = () => { window.switched = true; };
        window.inputs = 0;
        document.querySelector('#txt2img_prompt textarea').addEventListener('input', () => { window.inputs++; });
    """)
    browser.execute_script(JS_FILE.read_text(encoding="utf-8"))
    browser.execute_script("window.loraTrainerStartPolling();")
    page = Page(browser, tmp_path)
    page.wait(lambda: (browser.execute_script("return window.polls || 0") or 0) >= 1, 10, "poll clicked")

    assert browser.execute_script("return window.loraTrainerPollOnce()") == 4000  # idle: slow polling

    # The trainer's tab hidden (another WebUI tab is open): no poll.
    browser.execute_script("document.querySelector('#lora_trainer').style.display = 'none'; window.polls = 0;"
                           "window.loraTrainerPollOnce();")
    assert browser.execute_script("return window.polls") == 0

    browser.execute_script("return window.loraTrainerSendToTxt2img('sks, <lora:mine:0.8>');")
    value = browser.execute_script("return document.querySelector('#txt2img_prompt textarea').value")
    assert value == "a cat, sks, <lora:mine:0.8>"
    assert browser.execute_script("return [window.switched, window.inputs]") == [True, 1]


def _jobs(page: Page) -> dict:
    """{job id: (state, step)} from the Queue panel."""
    rows = page.d.find_elements(By.CSS_SELECTOR, "#lora_trainer_queue tr.lt-job")
    return {int(r.get_attribute("data-id")): (r.get_attribute("data-state"), int(r.get_attribute("data-step")))
            for r in rows}


def test_the_queue_panel_runs_two_jobs_with_live_progress_and_cancels_one(tmp_path, tiny_model_dir, browser, app):
    """'Add to queue' twice from the page: the first job's progress is seen live, Cancel stops it (it saves),
    the second then runs, its progress is seen, and it finishes."""
    from lora_trainer.tiny import make_shapes_dataset

    url, backend = app
    data = make_shapes_dataset(tmp_path / "data", n=4)
    config_file = tmp_path / "queue.yaml"
    config_file.write_text(yaml.safe_dump({
        "train_data_dir": str(data), "base_model": str(tiny_model_dir), "output_name": "q1",
        "output_dir": str(tmp_path / "runs" / "q1"),
        "resolution": 64, "min_bucket_reso": 64, "max_bucket_reso": 128, "lora_rank": 4, "batch_size": 1,
        "max_steps": STEPS, "learning_rate": 1e-3, "seed": 0, "device": "cpu"}))
    page = Page(browser, tmp_path)
    browser.get(url)
    page.wait(lambda: page.d.find_elements(By.CSS_SELECTOR, "#lora_trainer_queue .lt-queue"), 60, "queue panel")
    page.tick("lora_trainer_queue_pause")  # hold the queue until both jobs are in
    page.wait(lambda: "queue paused" in page.text("#lora_trainer_queue_msg"), 30, "queue paused")
    page.type("lora_trainer_config_path", str(config_file))
    page.click("lora_trainer_load_config")
    page.wait(lambda: "loaded" in page.text("#lora_trainer_config_msg"), 30, "config loaded")
    page.type("lora_trainer_cfg_output_dir", "")  # empty: each job's own folder, runs/<output_name>
    page.click("lora_trainer_enqueue")
    page.wait(lambda: "job 1 " in page.text("#lora_trainer_run_msg"), 30, "first job added")
    page.type("lora_trainer_cfg_output_name", "q2")
    page.type("lora_trainer_cfg_max_steps", "6")
    page.click("lora_trainer_enqueue")
    page.wait(lambda: "job 2 " in page.text("#lora_trainer_run_msg"), 30, "second job added")
    page.wait(lambda: len(_jobs(page)) == 2, 30, "two jobs listed")
    assert set(s for s, _ in _jobs(page).values()) == {"queued"}
    page.tick("lora_trainer_queue_pause")
    page.wait(lambda: "queue running" in page.text("#lora_trainer_queue_msg"), 30, "queue running again")

    page.wait(lambda: _jobs(page)[1] == ("running", _jobs(page)[1][1]) and _jobs(page)[1][1] >= 1, 120, "job 1 runs")
    seen = _jobs(page)[1][1]
    page.wait(lambda: _jobs(page)[1][1] > seen, 60, "job 1 progress is live")
    assert _jobs(page)[2][0] == "queued"  # one at a time
    page.type("lora_trainer_queue_id", "1")
    page.click("lora_trainer_queue_cancel")
    page.wait(lambda: _jobs(page)[1][0] == "cancelled", 120, "job 1 stopped")
    page.wait(lambda: _jobs(page)[2][0] in ("running", "done") and _jobs(page)[2][1] >= 1, 120, "job 2 progress")
    page.wait(lambda: _jobs(page)[2] == ("done", 6), 120, "job 2 done")
    page.shot("queue")
    q1, q2 = backend.job_queue().get(1), backend.job_queue().get(2)
    assert 1 <= q1.step < STEPS and Path(q1.result["lora_path"]).is_file()
    assert Path(q2.result["lora_path"]).name == "q2.safetensors" and Path(q2.result["lora_path"]).is_file()
