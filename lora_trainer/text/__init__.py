"""LoRA for small causal language models (GPT-2 class, Llama/Qwen2-architecture checkpoints) from a YAML
config with `task: text`, and the page's prompt assistant built on it.

Layout, one job per module:
  task        which configs are text configs; the CLI's one dispatch point (light: no torch)
  config      TextTrainConfig: keys, defaults, validation
  data        .txt / .jsonl files -> documents and prompt/completion pairs
  batches     tokens -> packed or padded examples, completion-only labels, batches, data order
  model       the base model and tokenizer from a local folder; LoRA targets; adapter save and merge
  trainer     the loop: loss, accumulation, clipping, stop, out-of-memory retry
  state       training state on disk for exact resumption
  run         a whole run: checks, data, model, loop, files (what the CLI and the page call)
  plan        peak-memory estimate and the largest batch that fits
  cli         `train` / `check` / `plan` / `keys` for text configs
  prompts     collect a WebUI user's prompts (PNG info, styles.csv, a pasted list)
  assistant   training pairs from prompts, the assistant's run, and expanding a short idea into a prompt
The page's section is lora_trainer/ui/sections/prompt_assistant.py; a host offers its own prompt sources
(`Host.prompt_sources`; the WebUI's are in lora_trainer/hosts/a1111/prompt_sources.py).
"""
