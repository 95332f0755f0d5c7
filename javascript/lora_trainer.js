// LoRA Trainer: WebUI page additions (filled in with the WebUI tab).
