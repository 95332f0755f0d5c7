"""The training loop. Reads top to bottom: set up, then for each optimizer step: latents, conditioning,
noise, timesteps, noisy latents, prediction, loss, backward, clip, step.

Randomness is counter-based (see utils/seeding): the noise and timesteps of step N depend only on
(seed, N), the data order of epoch E only on (seed, E). A resumed run therefore sees exactly what an
uninterrupted run sees, and nothing outside the loop (samples, evaluations) can shift it. Data-parallel
ranks (engine/distributed) all compute the same global batches and each trains on its slice of them.
"""
from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..adapters import AdapterSpec, default_adapter_kinds
from ..config import TrainConfig
from ..data.cache import LatentCache, TextCache
from ..data.dataset import PixelPrefetcher, Sample, TrainingSet, stack_pixels
from ..errors import TrainingStopped
from ..events import Events, LossesRead, RunStarted, StepEnded
from ..network.network import AdapterNetwork
from ..models.bundle import Conditioning, ModelBundle
from ..models.half_norms import half_norms_help
from ..models.packed_convs import decide_packing
from ..utils.device import Precision, available_ram, is_out_of_memory
from ..utils.malloc import large_allocations_mapped
from ..utils.seeding import generator
from .caching import build_caches
from .distributed import SINGLE, Distributed
from .faults import FaultInjector
from .diffusion import add_noise, make_noise, min_snr_weights, per_sample_mse, to_device, training_target
from .graphs import GraphedLoss
from .schedule import NONFINITE_ADVICE, OOM_ADVICE, Progress, schedule_length
from .optim import build_optimizer, build_scheduler


class Trainer:
    """Trains a LoRA on a bundle over a dataset; emits events; never prints."""

    def __init__(self, config: TrainConfig, dataset: TrainingSet, bundle: ModelBundle, device: torch.device,
                 precision: Precision, events: Optional[Events] = None, dist: Distributed = SINGLE,
                 release_encoders: bool = False):
        self.config = config
        self.release_encoders = release_encoders  # the run loaded the model and renders nothing: free cached encoders
        self.dist = dist  # data-parallel ranks each take a slice of every global batch (engine/distributed)
        self.global_batch_size = config.batch_size * dist.world_size
        self.dataset = dataset
        self.bundle = bundle
        self.device = device
        self.precision = precision
        self.events = events or Events()
        self.schedule = schedule_length(config, dataset, dist.world_size)
        self.progress = Progress()
        self.network: Optional[AdapterNetwork] = None
        self.latent_cache: Optional[LatentCache] = None
        self.text_cache: Optional[TextCache] = None
        self.micro_batch_size = config.batch_size
        self.prefetcher: Optional[PixelPrefetcher] = None
        self.forced_checkpointing = False
        self.gradient_checkpointing = False  # resolved in setup()
        self.faults = FaultInjector()
        self.max_nonfinite_steps = config.max_nonfinite_steps
        self.graphs: Optional[GraphedLoss] = None
        self.alphas_cumprod = bundle.alphas_cumprod  # moved to the device in setup(): no copy per step

    # ------------------------------------------------------------------ setup
    def setup(self, spec: Optional[AdapterSpec] = None) -> None:
        """Freeze and place the model, add the adapter layers (`spec`, default: the config's network), build
        caches, optimizer and schedule."""
        cfg = self.config
        if self.device.type == "cuda":  # TF32 for the fp32 parts (LoRA grads, norms) on Ampere and newer
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.gradient_checkpointing = cfg.gradient_checkpointing_for(self.bundle.family)
        self.bundle.prepare(self.device, self.precision.base_dtype, self.gradient_checkpointing,
                            cfg.train_text_encoder)
        torch.manual_seed(cfg.seed)  # LoRA down-weights are initialised from the global RNG
        spec = spec or default_adapter_kinds().spec_for(cfg)
        self.network = AdapterNetwork.inject(self.bundle.network_components(cfg.train_text_encoder), spec)
        self.latent_cache, self.text_cache = build_caches(cfg, self.dataset, self.bundle, self.device, self.dist,
                                                          self.events, self.autocast, self.global_batch_size,
                                                          self.release_encoders)
        self.alphas_cumprod = self.bundle.alphas_cumprod.to(self.device)
        self.graphs = self._build_graphs()
        if cfg.channels_last is True or (cfg.channels_last == "auto" and self._channels_last_helps()):
            self.bundle.use_channels_last()
        if half_norms_help(cfg.half_precision_norms, self.device, self.precision.base_dtype,
                           self.precision.autocast_dtype):
            self.bundle.use_half_precision_norms()  # GPU: no fp32 round trip per norm (models/half_norms)
        if cfg.torch_compile:
            self.bundle.compile()
        read = self.network.base_layers_read()  # weights an adapter reads (DoRA) stay as they are, unpacked
        pack, lean = self._packing(read)  # frozen weights in oneDNN's layout once, not on every call (CPU),
        if pack:  # replacing the originals (restore() rebuilds)
            self.bundle.pack_convolutions(in_place=True, skip=read, lean=lean)
        if self.latent_cache is None and cfg.num_workers > 0:
            self.prefetcher = PixelPrefetcher(self.dataset, cfg.num_workers, pin=self.device.type == "cuda")
        # one parameter group per component role (unet first), each with its own learning rate
        roles = ["unet"] + [r for r in self.network.roles() if r != "unet"]
        groups = [{"params": self.network.parameters(role), "lr": cfg.learning_rate_for(role)} for role in roles]
        self.optimizer = build_optimizer(cfg.optimizer, groups, cfg.weight_decay, self.device)
        self.lr_scheduler = build_scheduler(cfg.lr_scheduler, self.optimizer, cfg.lr_warmup_steps,
                                            self.schedule["total_steps"], cfg.lr_num_cycles)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision.use_grad_scaler else None
        self._skip_on_device = self.device.type == "cuda" and getattr(self.optimizer, "_step_supports_amp_scaling",
                                                                      False) and self.scaler is None
        self._consecutive_nonfinite = torch.zeros((), dtype=torch.int32, device=self.device)
        self._nonfinite_total = torch.zeros((), dtype=torch.int32, device=self.device)

    def _build_graphs(self) -> Optional[GraphedLoss]:
        """CUDA graphs for the loss when the step's inputs are device tensors (see engine/graphs)."""
        cfg = self.config
        if cfg.cuda_graphs is False or self.device.type != "cuda":
            return None
        blockers = [reason for reason, present in [
            ("latents are not cached", self.latent_cache is None),
            ("captions are not cached (or the text encoder trains)", self.text_cache is None),
            (f"the {self.bundle.family.name} model's forward reads host data", not self.bundle.graph_capturable),
            ("gradient checkpointing is on", self.gradient_checkpointing and cfg.cuda_graphs == "auto"),
            # capturing compiled code has not been measured yet: only when asked for explicitly
            ("torch_compile is on", cfg.torch_compile and cfg.cuda_graphs == "auto")] if present]
        if blockers:
            if cfg.cuda_graphs is True:
                self.events.say(f"cuda_graphs: off because {', '.join(blockers)}", logging.WARNING)
            return None
        loss_fn = lambda latents, noise, timesteps, cond: self.denoising_loss(  # noqa: E731
            latents, noise, timesteps, cond, None, autocast_cache=False)
        return GraphedLoss(loss_fn, self.network.parameters(), 8 if cfg.cuda_graphs is True else 1, self.events.say)

    def _channels_last_helps(self) -> bool:
        """Measured (benchmarks/README.md): channels-last convolutions win on a GPU once kernels are not
        launch-bound (CUDA graphs), and with bf16 oneDNN kernels on a CPU; eager on a GPU they lose."""
        cpu_bf16 = self.device.type == "cpu" and self.precision.base_dtype == torch.bfloat16
        return self.graphs is not None or cpu_bf16

    def _packing(self, read: Sequence[nn.Module]) -> Tuple[bool, bool]:
        """pack_conv_weights: (pack, lean) on a CPU, for a model the trainer owns (models/packed_convs
        `decide_packing`; what each gains is measured in benchmarks/README.md)."""
        if self.bundle.fixed_placement is not None:
            return False, False  # the WebUI's weights are its own
        need, lean_need = (self.bundle.packed_convolution_bytes(True, read, lean) for lean in (False, True))
        pack, lean, message = decide_packing(self.config.pack_conv_weights, self.config.torch_compile, self.device,
                                             self.precision, need, available_ram(), lean_need)
        if message:
            self.events.say(message)
        return pack, lean

    def autocast(self, cache: bool = True):
        """Autocast to the run's compute dtype (a no-op context in fp32)."""
        dtype = self.precision.autocast_dtype
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None, cache_enabled=cache)

    # ------------------------------------------------------------------ per batch
    def latents_for(self, samples: Sequence[Sample]) -> torch.Tensor:
        if self.latent_cache is not None:
            return self.latent_cache.get(samples)
        pixels = self.prefetcher.get(samples) if self.prefetcher else stack_pixels(self.dataset, samples)
        return self.bundle.encode_images(pixels)

    def conditioning_for(self, samples: Sequence[Sample]) -> Conditioning:
        captions = [s.caption for s in samples]
        if self.text_cache is not None:
            return self.text_cache.get(captions)
        return self.bundle.encode_captions(captions)

    def batch_loss(self, samples: Sequence[Sample], noise: torch.Tensor, timesteps: torch.Tensor,
                   graphed: bool = False) -> torch.Tensor:
        """Per-sample training loss of one micro-batch (fp32, with gradients); `graphed`: may replay a CUDA
        graph (only when this is the step's single forward/backward)."""
        latents = self.latents_for(samples)
        noise = to_device(noise, latents.device).to(latents.dtype)
        timesteps = to_device(timesteps, latents.device)
        with self.autocast():
            cond = self.conditioning_for(samples)
        if graphed and self.graphs is not None:
            loss = self.graphs(latents, noise, timesteps, cond)
            if loss is not None:
                return loss
        infos = [self.dataset.image_info(s.index) for s in samples]
        return self.denoising_loss(latents, noise, timesteps, cond, infos)

    def denoising_loss(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning,
                       infos: Optional[Sequence] = None, autocast_cache: bool = True,
                       min_snr: bool = True) -> torch.Tensor:
        """Noise the latents, predict, and return the per-sample MSE to the target; min-SNR weighted (when
        `min_snr_gamma` is set) unless `min_snr` is False. Training and validation both compute it here."""
        ac = self.alphas_cumprod
        noisy = add_noise(latents, noise, timesteps, ac)
        upcast_free = self.network.without_input_upcast() if self.precision.autocast_dtype else nullcontext()
        with self.autocast(autocast_cache), upcast_free:
            pred = self.bundle.predict(noisy, timesteps, cond, infos)
        target = training_target(latents, noise, timesteps, ac, self.bundle.prediction_type)
        loss = per_sample_mse(pred, target)
        weights = min_snr_weights(timesteps, ac, self.config.min_snr_gamma, self.bundle.prediction_type) \
            if min_snr else None
        return loss * weights if weights is not None else loss

    def step_noise(self, step: int, batch_index: int, samples: Sequence[Sample]):
        """Noise and timesteps of one batch of one step: a pure function of (seed, step, batch)."""
        w, h = self.dataset.buckets[samples[0].index]
        g = generator(self.config.seed, "noise", step, batch_index)
        shape = (len(samples), self.latent_channels, h // self.vae_factor, w // self.vae_factor)
        noise = make_noise(shape, g, self.config.noise_offset)
        timesteps = torch.randint(0, self.bundle.num_train_timesteps, (len(samples),), generator=g)
        return noise, timesteps

    @property
    def latent_channels(self) -> int:
        return self.bundle.latent_channels

    @property
    def vae_factor(self) -> int:
        return self.bundle.vae_factor

    def optimizer_step(self, step: int, batches: Sequence[Sequence[Sample]]) -> torch.Tensor:
        """One optimizer step; on out-of-memory, retry it with smaller micro-batches (same samples)."""
        while True:
            try:
                return self._optimizer_step(step, batches)
            except Exception as exc:  # only out-of-memory is handled, the rest re-raised
                if not is_out_of_memory(exc):
                    raise
                self._recover_from_oom(step)

    def _recover_from_oom(self, step: int) -> None:
        """Free memory and make the step smaller: halve the micro-batch, then turn on checkpointing."""
        import gc

        self.optimizer.zero_grad(set_to_none=True)
        if self.graphs is not None:  # their memory pools go; smaller micro-batches or checkpointing run eager
            self.graphs.release()
            self.graphs = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if self.micro_batch_size > 1:
            old = self.micro_batch_size
            self.micro_batch_size = max(1, old // 2)
            accumulation = self.config.gradient_accumulation_steps * -(-self.config.batch_size // self.micro_batch_size)
            self.events.say(f"out of memory at step {step + 1} with micro-batch {old}: retrying with micro-batch "
                            f"{self.micro_batch_size} and gradient accumulation {accumulation} (same effective batch)",
                            logging.WARNING)
        elif not (self.gradient_checkpointing or self.forced_checkpointing):
            self.force_gradient_checkpointing()
            self.events.say(f"out of memory at step {step + 1} with micro-batch 1: retrying with gradient "
                            f"checkpointing on", logging.WARNING)
        else:
            raise TrainingStopped(f"out of memory at step {step + 1} even with micro-batch 1 and gradient "
                                  f"checkpointing; {OOM_ADVICE}")

    def force_gradient_checkpointing(self) -> None:
        self.bundle.enable_gradient_checkpointing(self.config.train_text_encoder)
        self.forced_checkpointing = True

    def _optimizer_step(self, step: int, batches: Sequence[Sequence[Sample]]) -> torch.Tensor:
        """Forward/backward over this rank's share of the step's batches (split into micro-batches), sum the
        gradients over the ranks, clip, update. The loss is a mean over the global batch on every rank."""
        total = sum(len(b) for b in batches)
        shares = [self.dist.shard(len(b)) for b in batches]
        single_pass = len(batches) == 1 and self.micro_batch_size >= shares[0].stop - shares[0].start
        loss_sum = torch.zeros((), device=self.device)
        for bi, (batch, share) in enumerate(zip(batches, shares)):
            noise, timesteps = self.step_noise(step, bi, batch)  # of the whole batch: as one process draws them
            for k in range(share.start, share.stop, self.micro_batch_size):
                part = slice(k, min(k + self.micro_batch_size, share.stop))
                self.faults.before_forward(step, self.micro_batch_size)
                loss = self.batch_loss(batch[part], noise[part], timesteps[part], single_pass).sum() / total
                loss = self.faults.loss(step, loss)
                (self.scaler.scale(loss) if self.scaler else loss).backward()
                loss_sum += loss.detach()
        params = self.network.parameters()
        loss_sum = self.dist.sum_gradients(params, loss_sum)
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        finite = torch.isfinite(loss_sum)
        if self.config.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm, foreach=True)
            if self.scaler is None:  # with fp16 the grad scaler itself skips steps with inf gradients
                finite = finite & torch.isfinite(norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif self._skip_on_device:
            # fused AdamW skips the update on the GPU itself when found_inf is set: no host sync per step
            self.optimizer.found_inf = (~finite).float()
            self.optimizer.step()
            del self.optimizer.found_inf
        elif bool(finite):
            self.optimizer.step()
        self._consecutive_nonfinite = torch.where(finite, 0, self._consecutive_nonfinite + 1)
        self._nonfinite_total = self._nonfinite_total + (~finite).int()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum

    def check_nonfinite(self, step: int) -> None:
        """Read the skipped-step counters (at log time); stop after a run of non-finite steps."""
        p = self.progress
        total, consecutive = int(self._nonfinite_total), int(self._consecutive_nonfinite)
        if total > p.nonfinite_steps:
            self.events.say(f"{total - p.nonfinite_steps} step(s) up to step {step} had a non-finite loss or "
                            f"gradients and were skipped ({total} so far)", logging.WARNING)
        p.nonfinite_steps, p.consecutive_nonfinite = total, consecutive
        if consecutive >= self.max_nonfinite_steps:
            raise TrainingStopped(f"{consecutive} steps in a row had a non-finite loss; training stopped at step "
                                  f"{step}. {NONFINITE_ADVICE}")

    # ------------------------------------------------------------------ loop
    def run(self, on_checkpoint=None, on_sample=None) -> Progress:
        """Train until total_steps (or a stop request); `on_checkpoint(step, epoch, final)` saves and
        `on_sample(step)` is called when sample images are due (step 0: before training)."""
        weight_sized = self.device.type == "cpu" and self.network.builds_weight_sized_changes()
        with large_allocations_mapped(weight_sized):  # else freed changes fragment the heap (utils/malloc)
            return self._run(on_checkpoint, on_sample)

    def _run(self, on_checkpoint, on_sample) -> Progress:
        cfg, sched, p = self.config, self.schedule, self.progress
        total, spe, ga = sched["total_steps"], sched["steps_per_epoch"], cfg.gradient_accumulation_steps
        self.events.emit(RunStarted(total, spe, sched["epochs"], len(self.dataset), p.step,
                                    {"batches_per_epoch": sched["batches_per_epoch"]}))
        self.network.train(True)
        started, first_step = time.perf_counter(), p.step
        pending: List[torch.Tensor] = []
        if on_sample and self.sample_due(p.step):
            on_sample(p.step)
        while p.step < total:
            p.epoch = p.step // spe
            batches = self.dataset.epoch_batches(p.epoch, cfg.seed, self.global_batch_size)
            k = p.step % spe
            step_batches = batches[k * ga:(k + 1) * ga]
            if self.prefetcher is not None:
                self.prefetcher.prefetch(self._upcoming(p.step + 1, ga))
            pending.append(self.optimizer_step(p.step, step_batches))
            p.step += 1
            p.samples_seen += sum(len(b) for b in step_batches)
            stop = self.dist.any(self.events.stop_requested())  # every rank stops after the same step
            save = bool(on_checkpoint and p.step < total and cfg.save_steps and p.step % cfg.save_steps == 0)
            value = None
            if p.step % cfg.log_every_n_steps == 0 or p.step == total or stop or save:
                value = self._read_back(pending, p.step)
                pending = []
            elapsed = time.perf_counter() - started
            rate = (p.step - first_step) / elapsed if elapsed > 0 else 0.0
            self.events.emit(StepEnded(p.step, total, p.epoch + 1, value, self.lr_scheduler.get_last_lr()[0], rate,
                                       (total - p.step) / rate if rate else 0.0, p.samples_seen))
            if save and not stop:
                on_checkpoint(p.step, p.epoch, False)
            if on_sample and self.sample_due(p.step):
                on_sample(p.step)
            if stop:
                self.events.say(f"stop requested: stopping after step {p.step}")
                break
        if pending:
            self._read_back(pending, p.step)
        if self.graphs is not None:
            self.events.say(f"{self.graphs.replays} of {p.step - first_step} steps ran as CUDA graph replays")
            self.graphs.release()
        self.network.train(False)
        return p

    def _upcoming(self, step: int, ga: int) -> List[Sample]:
        spe = self.schedule["steps_per_epoch"]
        batches = self.dataset.epoch_batches(step // spe, self.config.seed, self.global_batch_size)
        k = step % spe
        return [s for b in batches[k * ga:(k + 1) * ga] for s in b[self.dist.shard(len(b))]]

    def sample_due(self, step: int) -> bool:
        from .sampling import is_sample_step

        cfg = self.config
        return is_sample_step(step, self.schedule["steps_per_epoch"], cfg.sample_every_n_steps,
                              cfg.sample_every_n_epochs, cfg.sample_at_start and step == self.progress.step == 0)

    def _read_back(self, pending: List[torch.Tensor], step: int) -> float:
        """One host sync for the losses of the last steps; also checks the non-finite counters."""
        values = torch.stack(pending).tolist()
        first = step - len(values) + 1
        self.progress.losses.extend(values)
        self.events.emit(LossesRead([(first + i, v) for i, v in enumerate(values)]))
        self.check_nonfinite(step)
        return values[-1]
