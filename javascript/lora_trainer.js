// LoRA Trainer: page script for the WebUI tab and the standalone page. The WebUI loads this file itself;
// the standalone app (lora_trainer/ui/app.py) runs it on page load. It only defines window.loraTrainer*.
(function () {
    if (window.loraTrainerStartPolling) {
        return; // already loaded
    }
    var FAST_MS = 1000; // while a job (or a queued job) runs
    var SLOW_MS = 4000; // otherwise

    function appRoot() {
        if (typeof gradioApp === "function") {
            return gradioApp();
        }
        var app = document.querySelector("gradio-app");
        return (app && app.shadowRoot) || document;
    }

    // Click the page's hidden "poll" button so that the Run section shows the server's job. Only while
    // the trainer's page is on screen (in the WebUI it is one tab of many) and the browser tab is visible.
    // Returns the delay until the next poll.
    function pollOnce() {
        var root = appRoot();
        var page = root.querySelector("#lora_trainer");
        var button = root.querySelector("#lora_trainer_poll");
        if (!page || !button) {
            return 500; // the page is still being built
        }
        if (page.getClientRects().length > 0 && !document.hidden) {
            button.click();
        }
        var busy = root.querySelector('#lora_trainer_run_status [data-active="1"]') ||
            root.querySelector('#lora_trainer_queue tr[data-state="running"]');
        return busy ? FAST_MS : SLOW_MS;
    }

    function tick() {
        setTimeout(tick, pollOnce());
    }

    window.loraTrainerPollOnce = pollOnce;
    window.loraTrainerStartPolling = function () {
        if (!window.loraTrainerPolling) {
            window.loraTrainerPolling = true;
            tick();
        }
    };

    // Put text into the WebUI's txt2img prompt (`combine(current, text)` gives the new value), tell gradio
    // about it, and switch to the txt2img tab.
    function intoTxt2imgPrompt(text, combine) {
        var box = appRoot().querySelector("#txt2img_prompt textarea");
        if (box && text) {
            box.value = combine(box.value, text);
            box.dispatchEvent(new Event("input", {bubbles: true}));
        }
        if (typeof switch_to_txt2img === "function") {
            switch_to_txt2img();
        }
        return [];
    }

    // Results -> "Send to txt2img" (WebUI only): append `<lora:name:weight>` and the trigger word.
    window.loraTrainerSendToTxt2img = function (text) {
        return intoTxt2imgPrompt(text, function (current, added) {
            current = current.replace(/[\s,]+$/, "");
            return current ? current + ", " + added : added;
        });
    };

    // Prompt assistant -> "Send to txt2img" (WebUI only): the expanded prompt replaces the txt2img prompt, as
    // the WebUI's own "Send to txt2img" buttons do.
    window.loraTrainerSetTxt2imgPrompt = function (text) {
        return intoTxt2imgPrompt(text, function (current, added) {
            return added;
        });
    };

    if (typeof onUiLoaded === "function") {
        onUiLoaded(window.loraTrainerStartPolling);
    }
})();
