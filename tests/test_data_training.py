"""Training on messy data and on cached latents."""
from __future__ import annotations

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lora_trainer.engine.run import LoraRun, load_model, train
from lora_trainer.events import Message, StepEnded

from recording import EventRecorder

from conftest import make_config
from test_dataset import _broken_dataset


def test_messy_dataset_trains_to_the_end_on_the_good_images(tmp_path, tiny_model_dir):
    good = _broken_dataset(tmp_path / "d")
    cfg = make_config(tiny_model_dir, tmp_path / "d", tmp_path / "out", max_steps=4, batch_size=1)
    recorder = EventRecorder()
    result = train(cfg, [recorder])
    assert result.steps == 4 and result.lora_path.is_file()
    assert result.report.num_images == len(good)
    warnings = "\n".join(m.text for m in recorder.of_type(Message))
    for name in ("truncated.jpg", "empty.png", "notes.png"):
        assert name in warnings
    assert "dup_a.png == dup_b.png" in warnings
    with safe_open(str(result.lora_path), "pt") as f:
        assert f.metadata()["ss_num_train_images"] == str(len(good))


class CountCalls:
    def __init__(self, module):
        self.calls = 0
        module.register_forward_hook(self)

    def __call__(self, *args):
        self.calls += 1


def test_second_run_reads_latents_from_disk_and_matches(tmp_path, tiny_model_dir, color_data):
    results, calls = [], []
    for name in ("first", "second"):
        cfg = make_config(tiny_model_dir, color_data, tmp_path / name, max_steps=5, cache_latents_to_disk=True,
                          output_name="x")
        bundle = load_model(cfg)
        counter = CountCalls(bundle.vae.encoder)
        results.append(load_file(str(train(cfg, bundle=bundle).lora_path)))
        calls.append(counter.calls)
    assert calls[0] > 0 and calls[1] == 0
    assert list((color_data / ".lora_trainer_cache").glob("*.safetensors"))
    for key in results[0]:
        assert torch.equal(results[0][key], results[1][key]), key


def test_uncached_training_with_prefetch_threads_matches_the_training_thread(tmp_path, tiny_model_dir, color_data):
    runs = [train(make_config(tiny_model_dir, color_data, tmp_path / f"w{w}", max_steps=4, cache_latents=False,
                              num_workers=w, output_name="x")) for w in (0, 2)]
    a, b = (load_file(str(r.lora_path)) for r in runs)
    for key in a:
        assert torch.equal(a[key], b[key]), key


class CallsAtFirstStep(EventRecorder):
    """Notes how many times each counter had been called when the first optimizer step ended."""

    def __init__(self, **counters: CountCalls) -> None:
        super().__init__()
        self.counters = counters
        self.at_first_step = {}

    def on_event(self, event) -> None:
        if isinstance(event, StepEnded) and event.step == 1:
            self.at_first_step = {name: c.calls for name, c in self.counters.items()}


def test_caching_as_the_first_epoch_goes_gives_the_same_lora_as_caching_first(tmp_path, tiny_model_dir, color_data):
    """cache_while_training: the first step runs before every image and caption is encoded (so it comes
    sooner), and the LoRA is bit-identical to the one trained after caching everything first."""
    loras, calls = {}, {}
    for lazy in (False, True):
        cfg = make_config(tiny_model_dir, color_data, tmp_path / str(lazy), max_steps=6, batch_size=1,
                          cache_while_training=lazy, output_name="x")
        bundle = load_model(cfg)
        recorder = CallsAtFirstStep(vae=CountCalls(bundle.vae.encoder), text=CountCalls(bundle.text_encoder))
        loras[lazy] = load_file(str(train(cfg, [recorder], bundle=bundle).lora_path))
        calls[lazy] = (recorder.at_first_step, {name: c.calls for name, c in recorder.counters.items()})
    images = len(list(color_data.glob("*.png")))
    assert calls[False][0] == {"vae": images, "text": 1}  # all at once: one caption batch
    assert calls[True][0] == {"vae": 1, "text": 1}  # only the first batch's image, the captions' batch
    assert calls[True][1] == calls[False][1] == {"vae": images, "text": 1}  # each encoded once, in the end
    assert loras[True].keys() == loras[False].keys()
    for key in loras[False]:
        assert torch.equal(loras[True][key], loras[False][key]), key


def _is_released(module: torch.nn.Module) -> bool:
    return all(p.is_meta for p in module.parameters())


def test_a_run_that_loaded_its_model_frees_the_encoders_once_their_caches_are_full(tmp_path, tiny_model_dir,
                                                                                color_data):
    """Once every caption and latent is cached, a one-shot run (`train()`) that loaded the model for itself and
    renders nothing frees the text encoder and the VAE (a CPU keeps them nowhere else); the LoRA is
    bit-identical to the one of a run on a model it was given, which keeps them, as it does when it samples."""
    cfg = make_config(tiny_model_dir, color_data, tmp_path / "owned", max_steps=4, batch_size=2, output_name="x")
    run = LoraRun(cfg, tensorboard=False, free_encoders=True)  # as `train()` makes it
    trainer = run.setup()
    try:
        assert not _is_released(trainer.bundle.text_encoder) and not _is_released(trainer.bundle.vae.encoder)
        assert _is_released(trainer.bundle.vae.decoder)  # nothing renders: the decoder goes at once
        run.train()
        owned = load_file(str(run.save_final()))
        assert _is_released(trainer.bundle.text_encoder) and _is_released(trainer.bundle.vae)
    finally:
        run.close()
    given = make_config(tiny_model_dir, color_data, tmp_path / "given", max_steps=4, batch_size=2, output_name="x")
    bundle = load_model(given)
    kept = load_file(str(train(given, bundle=bundle).lora_path))
    assert not _is_released(bundle.text_encoder) and not _is_released(bundle.vae)
    assert owned.keys() == kept.keys() and all(torch.equal(owned[k], kept[k]) for k in owned)
    sampling = make_config(tiny_model_dir, color_data, tmp_path / "sampling", max_steps=2, batch_size=2,
                           sample_prompts=["a red square"], sample_every_n_steps=2, sample_steps=2)
    run = LoraRun(sampling, tensorboard=False, free_encoders=True)
    trainer = run.setup()
    try:
        run.train()
        assert not _is_released(trainer.bundle.text_encoder) and not _is_released(trainer.bundle.vae)
    finally:
        run.close()
