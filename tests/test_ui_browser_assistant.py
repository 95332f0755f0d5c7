"""The prompt assistant on the standalone page in a real browser (the fixtures and helpers of
test_ui_browser.py): paste prompts and collect them, train a tiny GPT-2 on them as a server job while the
page shows its progress, expand an idea into a prompt in the collected style; and the page script's
"Send to txt2img" for the assistant replacing the WebUI's prompt (on a stand-in for the WebUI page)."""
from __future__ import annotations

import os
from pathlib import Path

from test_ui_browser import FAKE_WEBUI_PAGE, Page, app, browser, pytestmark  # noqa: F401 - fixtures and skip mark
from text_models import build_tiny_gpt2

SUBJECTS = ["a red fox", "an old lighthouse", "a sleeping cat", "a mountain lake", "a city street", "a tall ship",
            "a snowy forest", "a desert road", "a young knight", "a glass teapot", "a village market", "a white horse"]
STYLE_TAGS = ("masterpiece", "oil painting", "golden hour", "by greg rutkowski")
PROMPTS = [f"masterpiece, {s}, oil painting, golden hour, by greg rutkowski" for s in SUBJECTS]


def _state(page: Page) -> str:
    return page.attr("#lora_trainer_assistant_status .lt-status", "data-state") or ""


def test_collect_train_and_expand_on_the_page(tmp_path, browser, app):  # noqa: F811 - pytest fixtures
    import gradio

    url, service = app
    shots = Path(os.environ.get("LORA_TRAINER_SCREENSHOTS") or tmp_path / "screenshots") / \
        f"gradio-{gradio.__version__}-assistant"
    shots.mkdir(parents=True, exist_ok=True)
    model = build_tiny_gpt2(tmp_path / "gpt2", corpus=PROMPTS + ["Idea: x\nPrompt:"])
    page = Page(browser, shots)
    browser.get(url)
    page.wait(lambda: page.d.find_elements("css selector", "#lora_trainer_assistant_box"), 60, "page")
    page.open_accordion("lora_trainer_assistant_box")
    page.wait(lambda: page.text_input("lora_trainer_assistant_pasted").is_displayed(), 10, "assistant open")

    # Collect: a pasted list (set as a user's paste would, with its line breaks).
    box = page.text_input("lora_trainer_assistant_pasted")
    browser.execute_script("arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input', "
                           "{bubbles: true}));", box, "\n".join(PROMPTS))
    page.click("lora_trainer_assistant_collect")
    page.wait(lambda: page.attr("#lora_trainer_assistant_collect_msg .lt-msg", "data-count"), 30, "collected")
    assert page.attr("#lora_trainer_assistant_collect_msg .lt-msg", "data-count") == str(len(PROMPTS))
    folder = Path(service.default_output_dir("prompt_assistant"))
    assert (folder / "prompts.jsonl").read_text(encoding="utf-8").count("\n") == len(PROMPTS)
    page.shot("assistant-collected", "#lora_trainer_assistant_box")

    # Train: a job on the server; the section shows its progress until it finishes.
    page.type("lora_trainer_assistant_model", str(model))
    page.type("lora_trainer_assistant_steps", "80")
    page.type("lora_trainer_assistant_lr", "0.01")
    page.click("lora_trainer_assistant_train")
    page.wait(lambda: _state(page) in ("running", "finished"), 60, "assistant training started")
    page.shot("assistant-training", "#lora_trainer_assistant_model")
    page.wait(lambda: _state(page) == "finished", 240, "assistant trained")
    assert page.attr("#lora_trainer_assistant_status .lt-status", "data-step") == "80"
    assert (folder / "adapter_model.safetensors").is_file()
    assert not page.d.find_elements("css selector", '#lora_trainer_results tr[data-name="adapter_model"]')

    # Expand an idea, always the most likely prompt (creativity 0).
    page.type("lora_trainer_assistant_idea", "a purple dragon")
    page.type("lora_trainer_assistant_creativity", "0")
    page.click("lora_trainer_assistant_expand")
    page.wait(lambda: page.text_input("lora_trainer_assistant_result").get_attribute("value"), 120, "expanded")
    expanded = page.text_input("lora_trainer_assistant_result").get_attribute("value")
    assert sum(tag in expanded for tag in STYLE_TAGS) >= 2, expanded
    assert not page.text("#lora_trainer_assistant_msg .lt-msg-error")
    page.shot("assistant-expanded", "#lora_trainer_assistant_model")


def test_assistant_send_replaces_the_txt2img_prompt(tmp_path, browser):  # noqa: F811 - pytest fixture
    from lora_trainer.ui.app import JS_FILE

    page_file = tmp_path / "webui.html"
    page_file.write_text(FAKE_WEBUI_PAGE, encoding="utf-8")
    browser.get(page_file.as_uri())
    browser.execute_script("window.gradioApp = () => document; window.switch_to_txt2img = () => { window.switched = "
                           "true; }; window.inputs = 0; document.querySelector('#txt2img_prompt textarea')"
                           ".addEventListener('input', () => { window.inputs++; });")
    browser.execute_script(JS_FILE.read_text(encoding="utf-8"))
    browser.execute_script("return window.loraTrainerSetTxt2imgPrompt('masterpiece, a red fox, oil painting');")
    value = browser.execute_script("return document.querySelector('#txt2img_prompt textarea').value")
    assert value == "masterpiece, a red fox, oil painting"
    assert browser.execute_script("return [window.switched, window.inputs]") == [True, 1]
