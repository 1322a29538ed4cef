"""The training loop: `train(config)` runs a whole run, fresh or resumed, in one process or under torchrun.

One optimizer step = grad_accum micro-batches of batch_size rows (the global batch: under torchrun
every rank reads it and takes its share). One process and every layout run the same path: build the
model, `parallelize` it (one process is the degenerate mesh), AdamW per part, then the one
`train_step` (step.py) and `evaluate`. The loss is the mean over every token of the step, so the
numbers do not depend on the parallel layout. Everything a step depends on (weights,
AdamW moments, the step for the schedule, the loader's position) is checkpointed in a layout-free form,
so a resumed run repeats the uninterrupted run's losses, exactly in one process and to rounding under
another layout.
"""

from __future__ import annotations

import math
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..config import ModelConfig
from ..errors import EXIT_DIVERGED, IOFault, Reported, find_os_error
from ..flops import flops_per_token
from . import distributed
from .checkpoint import (checkpoint_step, clean_partial, latest_checkpoint, list_checkpoints, load_checkpoint,
                         load_model, prune_checkpoints, save_checkpoint)
from .config import TrainConfig
from .data import check_data_fits_model, ensure_data, no_validation_warning, train_loader, val_batches
from .loss import resolve_chunk
from .metrics import (MetricsLogger, check_tensorboard_available, first_skipped_step, memory_gib, read_metrics,
                      truncate_metrics)
from .model_setup import build_train_model, resolve_model_config
from .optim import set_hyperparameters
from .parallel_layout import launched_world_size, resolve_layout
from ..parallel import ParallelConfig, build_mesh, parallelize
from ..parallel.compile import default_cache_dir, failed_compilations
from ..parallel.pipeline import local_stage_filter
from .resume import checkpoint_names, kept_in_run, resolve_resume_from, resume_checkpoint
from .run_config import check_resumed_config, write_run_config
from .run_lock import lock_run, refuse_if_locked
from .schedule import schedule_from_config
from .step import Batch, StepResult, build_optimizers, evaluate, train_step
from .watchdog import Heartbeats, describe_timeout, is_collective_timeout


class TrainingDiverged(Reported, RuntimeError):
    """The loss or gradient was not finite for --max-bad-steps optimizer steps in a row."""

    exit_code = EXIT_DIVERGED


def reads_ahead(device: torch.device) -> bool:
    """Whether the loop reads a step's loss while the next step runs (CUDA: the device never waits for the
    host between steps); on a CPU each step's work is done when its call returns, so there is nothing to gain."""
    return device.type == "cuda"


@dataclass
class _Launched:
    """A step queued on the device, its metrics not read yet."""
    step: int
    lr: float
    weight_decay: float
    started: float  # time.perf_counter() at launch
    result: StepResult
    after: StepResult | None = None  # the step still unread when this one was launched


@dataclass
class TrainResult:
    run_dir: str
    last_step: int
    losses: dict[int, float]  # step -> train loss, for the steps this call ran
    val_loss: float | None = None
    stopped_by_signal: bool = False
    sample: str | None = None


def check_run(config: TrainConfig, resume: bool, model_config: ModelConfig | None = None) -> ModelConfig:
    """Every user mistake this run can detect, as a ValueError naming the setting, before any work."""
    config.validate(model_given=model_config is not None)
    if Path(config.out).exists() and not Path(config.out).is_dir():
        raise ValueError(f"--out: {config.out} exists and is not a directory; name a run directory")
    refuse_if_locked(config.out)
    if resume:  # a resumed run keeps its model and data order, whoever calls train()
        model_config = check_resumed_config(config, model_config) or model_config
    model_config = model_config or resolve_model_config(config)
    resolve_layout(config, model_config, launched_world_size())
    if config.checkpoint_layers is not None and config.checkpoint_layers > model_config.num_layers:
        raise ValueError(f"--checkpoint-layers {config.checkpoint_layers} exceeds the model's "
                         f"{model_config.num_layers} layers")
    if config.seq_len > model_config.max_seq_len:
        raise ValueError(f"--seq-len {config.seq_len} exceeds the model's max_seq_len {model_config.max_seq_len} "
                         f"(raise it with --set max_seq_len=N)")
    check_data_fits_model(config, model_config)
    if config.tensorboard:
        check_tensorboard_available()
    config.resolved_device()
    if not resume and (list_checkpoints(config.out) or read_metrics(config.out)):
        raise ValueError(f"--out: {config.out} already holds a run; pass --resume to continue it, "
                         "or choose a new directory")
    saved = list_checkpoints(config.out) if resume else []
    if config.resume_from is not None:
        chosen = resolve_resume_from(config.out, config.resume_from)
        saved = [(step, path) for step, path in saved if path == chosen]
    if saved and saved[-1][0] > config.steps:
        raise ValueError(f"--steps {config.steps} is below the step of the checkpoint to resume from "
                         f"({saved[-1][0]}) in {config.out}")
    return model_config


class _StopFlag:
    """Set by SIGTERM or Ctrl-C (SIGINT); the loop finishes its step, saves, and returns. A second Ctrl-C
    raises KeyboardInterrupt at once: stop without saving."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = None  # the name of the signal that asked, once one has
        self.previous = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self.previous = {number: signal.signal(number, self._handle) for number in self.SIGNALS}

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.requested == "SIGINT":
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        if signum == signal.SIGINT and distributed.rank() == 0:
            print("\nCtrl-C: stopping after this step and saving it (press Ctrl-C again to stop without saving)",
                  file=sys.stderr, flush=True)

    def restore(self) -> None:
        for number, previous in self.previous.items():
            signal.signal(number, previous)
        self.previous = {}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def train(config: TrainConfig, resume: bool = False, model_config: ModelConfig | None = None) -> TrainResult:
    """Run (or continue, with `resume` or config.resume_from) a training run in config.out.

    Raises TrainingDiverged, IOFault (a disk full, a read-only directory: the message says what was kept)
    or CollectiveTimeout (a rank stopped answering under torchrun); hybridcore.errors gives their exit codes."""
    resume = resume or config.resume_from is not None
    model_config = check_run(config, resume, model_config)
    device_name = config.resolved_device()
    rank, world_size, device = distributed.init_from_environment(device_name, config.dist_timeout)
    run_dir = Path(config.out)
    lock = heartbeats = None
    try:
        lock = lock_run(run_dir)  # collective: a second process on this run is refused, on every rank
        heartbeats = Heartbeats.start(rank, world_size)
        layout = resolve_layout(config, model_config, world_size)
        fast = config.with_fast_defaults(device.type, world_size)
        result = _Run(fast, model_config, run_dir, device, rank, world_size, resume, layout, requested=config).run()
    except BaseException as error:
        explained = _explain(error, config, run_dir, rank, heartbeats)
        distributed.shutdown(clean=False)  # no barrier: the other ranks may never reach it
        if explained is not None:
            raise explained from error
        raise
    finally:
        if heartbeats is not None:
            heartbeats.stop()
        if lock is not None:
            lock.release()
    distributed.shutdown(clean=True)
    return result


def _explain(error: BaseException, config: TrainConfig, run_dir: Path, rank: int, heartbeats) -> Reported | None:
    """A failure of the run as a message that says what happened and what was kept (None: leave it as it is)."""
    if isinstance(error, (ValueError, KeyboardInterrupt, TrainingDiverged)):
        return None
    if is_collective_timeout(error):
        return describe_timeout(rank, config.dist_timeout, heartbeats, _kept(run_dir)[1])
    os_error = error.error if isinstance(error, IOFault) else find_os_error(error)
    if os_error is None:
        return None
    doing = error.doing if isinstance(error, IOFault) else f"training in {run_dir}"
    path = error.path if isinstance(error, IOFault) else None
    started, kept = _kept(run_dir)
    then = f"continue with `hybridcore train --out {run_dir} --resume`" if started else "run the command again"
    return IOFault(os_error, doing, path=path, kept=kept, then=then)


def _kept(run_dir: Path) -> tuple[bool, str]:
    """(whether the run has anything to continue from, what it kept, in words)."""
    try:
        if not (list_checkpoints(run_dir) or read_metrics(run_dir)):
            return False, "Nothing was written"
        return True, kept_in_run(run_dir)
    except (OSError, ValueError):
        return False, f"{run_dir} could not be read back"


class _Run:
    def __init__(self, config: TrainConfig, model_config: ModelConfig, run_dir: Path, device: torch.device,
                 rank: int, world_size: int, resume: bool, layout=None, requested: TrainConfig | None = None):
        # config: the settings this run uses; requested: as given, what run_config.json keeps (a default
        # such as compile's is decided again by each resume, on its own device)
        self.config, self.model_config, self.run_dir = config, model_config, run_dir
        self.requested = requested or config
        self.compile_falls_back = config.compile and self.requested.compile is None
        self.device, self.rank, self.world_size = device, rank, world_size
        self.is_main = rank == 0
        self.bar = None  # the progress bar while the loop runs (messages go through it)
        dtype = config.resolved_dtype(device.type)
        self.autocast_dtype = torch.bfloat16 if dtype == "bf16" else None
        self.schedule = schedule_from_config(config)
        self.tokens_per_step = config.batch_size * config.seq_len * config.grad_accum
        self.flops_per_token = flops_per_token(model_config, config.seq_len).total

        _seed_everything(config.seed)
        checkpoint = resume_checkpoint(run_dir, config.resume_from) if resume else None
        keep = None  # under a pipeline, materialise only this rank's stages (unless --init-hf must load)
        if layout is not None and layout.pp > 1 and (config.init_hf is None or checkpoint is not None):
            keep = local_stage_filter(model_config, layout, rank * layout.pp // world_size, config.seq_len)
        model = build_train_model(model_config, config, device, load_init=checkpoint is None, keep=keep)
        # One process is the degenerate layout: the same parallelize, step and evaluation as any other.
        mesh = build_mesh(layout, device.type) if layout is not None else None
        self.loss_chunk = config.loss_chunk or resolve_chunk(config.batch_size * config.seq_len,
                                                             model_config.vocab_size)
        self.model = parallelize(model, mesh, layout or ParallelConfig(dp_shard=1),
                                 activation_checkpointing=config.activation_checkpointing,
                                 checkpoint_layers=config.checkpoint_layers,
                                 checkpoint_policy=config.checkpoint_policy, compile=config.compile,
                                 compile_mode=config.compile_mode, compile_cache_dir=config.compile_cache_dir,
                                 compile_fallback=self.compile_falls_back,
                                 float8=config.fp8, float8_min_size=config.fp8_min_size, seq_len=config.seq_len,
                                 loss_chunk=self.loss_chunk)
        self.model.train()
        self.optimizers = build_optimizers(self.model, config.lr, config.weight_decay, (config.beta1, config.beta2),
                                           config.eps)
        # what checkpoints hold: one optimizer, or one per pipeline stage
        self.optimizer = self.optimizers if len(self.optimizers) > 1 else self.optimizers[0]
        if self._accumulates_under_graphs():
            for part in self.model.parts:
                keep_gradients_allocated(part)
        data_dir = ensure_data(config, progress=config.progress and self.is_main)
        self.data_dir = data_dir
        # Every rank reads the whole global batch; the step takes this rank's share.
        self.loader = train_loader(data_dir, config, 0, 1)
        self.val_batches = val_batches(data_dir, config, 0, 1)

        self.start_step, self.tokens = 0, 0
        if self.is_main:
            clean_partial(run_dir)
        distributed.barrier()
        if checkpoint is not None:
            extra = load_checkpoint(checkpoint, self.model, self.optimizer)
            self.loader.load_state_dict(extra["loader"])
            self.start_step, self.tokens = int(extra["step"]), int(extra["tokens"])
            self._say(f"resumed from {checkpoint} (step {self.start_step})")
        elif resume:
            self._say(f"no complete checkpoint in {run_dir / 'checkpoints'}: starting from step 0")
        if self.is_main:
            truncate_metrics(run_dir, self.start_step)
            write_run_config(run_dir, self.requested, model_config)
        distributed.barrier()
        self.metrics = MetricsLogger(run_dir, enabled=self.is_main, tensorboard=config.tensorboard,
                                     start_step=self.start_step)

    def _accumulates_under_graphs(self) -> bool:
        """Several micro-batches per step under CUDA graphs: see keep_gradients_allocated. With one, the
        graph-owned gradients are read by the optimizer before the next replay and then dropped, which
        saves an addition over every gradient and a second copy of them (measured on 8 7B blocks: 3.5%
        slower and 7.6 GiB more when every run kept them)."""
        return self.config.uses_cuda_graphs() and self.config.grad_accum > 1

    # ---- messages ---------------------------------------------------------------------------------------
    def _say(self, message: str, error: bool = False) -> None:
        if not self.is_main:
            return
        stream = sys.stderr if error else sys.stdout
        if self.bar is not None:
            tqdm.write(message, file=stream)
        else:
            print(message, file=stream, flush=True)

    # ---- one optimizer step ---------------------------------------------------------------------------
    def _micro_batches(self) -> list[dict]:
        return [next(self.loader) for _ in range(self.config.grad_accum)]

    def launch(self, step: int, after: _Launched | None = None) -> _Launched:
        """Queue one optimizer step's work on the device without waiting for it (`finish` reads it);
        `after`: the launched step not read yet, whose work this one's follows on the device."""
        config = self.config
        lr = config.lr * self.schedule.lr_factor(step)
        weight_decay = config.weight_decay * self.schedule.wd_factor(step)
        for optimizer in self.optimizers:
            set_hyperparameters(optimizer, lr, weight_decay)
        started = time.perf_counter()
        batches = [Batch.from_loader(batch) for batch in self._micro_batches()]
        max_norm = config.clip if config.clip > 0 else math.inf
        result = train_step(self.model, self.optimizers, batches, max_norm=max_norm, autocast_dtype=self.autocast_dtype,
                            loss_chunk=self.loss_chunk, cuda_graphs=config.uses_cuda_graphs())
        return _Launched(step, lr, weight_decay, started, result, after.result if after is not None else None)

    def finish(self, launched: _Launched) -> dict:
        """Wait for a launched step and return its metrics record. Its time runs from its launch to its end
        (host time included), or, launched while the step before it ran, from the end of that step's work on
        the device to the end of its own (the device's clock: when the host reads it does not matter)."""
        result = launched.result
        loss_value, grad_norm = result.values  # waits for the step
        finite = result.finite
        elapsed = result.seconds_since(launched.after)
        if elapsed is None:
            elapsed = time.perf_counter() - launched.started
        self.tokens += self.tokens_per_step
        record = {"step": launched.step, "loss": loss_value if finite else None, "lr": launched.lr,
                  "weight_decay": launched.weight_decay, "grad_norm": grad_norm if math.isfinite(grad_norm) else None,
                  "tokens": self.tokens, "tokens_per_s": self.tokens_per_step / elapsed, "step_time_s": elapsed,
                  "memory_gib": memory_gib(self.device)}
        if self.device.type == "cuda":
            record["mfu"] = self.flops_per_token * record["tokens_per_s"] / (self.config.peak_flops * self.world_size)
        if not finite:
            record["skipped"] = True
        return record

    # ---- evaluation, checkpoints -----------------------------------------------------------------------
    def evaluate(self, step: int, log: bool = True) -> float | None:
        if not self.val_batches:
            return None
        val_loss, tokens = evaluate(self.model, [Batch.from_loader(batch) for batch in self.val_batches],
                                    autocast_dtype=self.autocast_dtype, loss_chunk=self.loss_chunk)
        if log:
            self.metrics.log({"step": step, "val_loss": val_loss, "val_ppl": _perplexity(val_loss),
                              "val_tokens": tokens})
        return val_loss

    def save(self, step: int) -> None:
        extra = {"loader": self.loader.state_dict(), "tokens": self.tokens}
        config = {"model": self.model_config.to_dict(), "train": self.config.to_dict()}
        path = save_checkpoint(self.run_dir, step, self.model, self.optimizer, extra, config)
        for old in prune_checkpoints(self.run_dir, self.config.keep_last, protect=self._last_good_checkpoint()):
            self._say(f"removed old checkpoint {old.name}")
        self._say(f"saved checkpoint {path}")

    def _last_good_checkpoint(self) -> Path | None:
        """The newest checkpoint from before the run's first non-finite step: pruning keeps it, since the
        ones after it may hold weights already on their way to diverging."""
        if self.first_bad_step is None:
            return None
        before = [path for step, path in list_checkpoints(self.run_dir) if step < self.first_bad_step]
        return before[-1] if before else None

    def _save_unless_bad(self, step: int, record: dict) -> bool:
        """Save `step` unless its loss or gradient was not finite (True when saved)."""
        if record.get("skipped"):
            newest = latest_checkpoint(self.run_dir)
            self._say(f"warning: not saving step {step}: its loss or gradient was not finite (the newest "
                      f"checkpoint stays {newest.name if newest else 'none'})", error=True)
            return False
        self.save(step)
        return True

    def _bad_step_warning(self, step: int, record: dict, in_a_row: int) -> str:
        norm = record["grad_norm"]
        norm = f"gradient norm {norm:.4g}" if norm is not None else "the gradient norm is not finite either"
        return (f"warning: step {step}: non-finite loss or gradient ({norm}); update skipped "
                f"({in_a_row} in a row, limit --max-bad-steps {self.config.max_bad_steps})")

    def _diverged(self, step: int, in_a_row: int) -> TrainingDiverged:
        config, good = self.config, self._last_good_checkpoint()
        advice = (f"continue from {good.name}, the newest from before the first non-finite step "
                  f"({self.first_bad_step}), with a lower --lr (it is {config.lr:g}) or a longer --warmup: "
                  f"hybridcore train --out {self.run_dir} --resume-from {checkpoint_step(good)} --lr LOWER"
                  if good is not None else f"start again with a lower --lr (it is {config.lr:g}) or a longer --warmup")
        return TrainingDiverged(
            f"training diverged: {in_a_row} optimizer steps in a row (up to step {step}) had a non-finite loss or "
            f"gradient (--max-bad-steps {config.max_bad_steps}). The run holds {checkpoint_names(self.run_dir)}; "
            f"{advice}")

    def _report_compile_fallback(self) -> None:
        """After the first step: say so when compile, on by default, gave up on some layers (they ran eagerly)."""
        failed = failed_compilations() if self.compile_falls_back else 0
        if failed:
            self._say(f"warning: torch.compile failed on {failed} frame(s), which run eagerly (slower; the warning "
                      f"above says why). --no-compile trains without compile, --compile stops at such a failure",
                      error=True)

    # ---- the loop ------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        config = self.config
        stop = _StopFlag()
        stop.install()
        self.losses, self.bad_in_a_row = {}, 0
        vote = distributed.StopVote(self.device)  # every rank stops after the same step
        step, val_loss, saved_at, pending = self.start_step, None, self.start_step, None
        self.first_bad_step = first_skipped_step(read_metrics(self.run_dir)) if self.is_main else None
        warning = no_validation_warning(self.data_dir, config) if not self.val_batches else None
        if warning:
            self._say(f"warning: {warning}", error=True)
        if config.compile and self.start_step < config.steps:  # a first step that would otherwise look stuck
            self._say(f"compiling each layer kind in the first steps: minutes with a cold compile cache, seconds "
                      f"with a warm one ({config.compile_cache_dir or default_cache_dir()})")
        self.bar = tqdm(total=config.steps, initial=self.start_step, unit="step", dynamic_ncols=True,
                        disable=not (config.progress and self.is_main), desc="train")
        try:
            for step in range(self.start_step + 1, config.steps + 1):
                launched = self.launch(step, after=pending)
                if pending is not None:  # the step before, read while this one runs on the device
                    self._account(self.finish(pending))
                    pending = None
                save_due = bool(config.save_every) and step % config.save_every == 0 and step < config.steps
                eval_due = bool(config.eval_every) and step % config.eval_every == 0 and step < config.steps
                stopping = vote(stop.requested is not None)
                # the first two steps (compiling, recording CUDA graphs) are read at once: their times are their own
                boundary = save_due or eval_due or stopping or step <= self.start_step + 2 or step == config.steps
                if reads_ahead(self.device) and not boundary:
                    pending = launched  # no step waits for the one before it to be read
                    continue
                record = self.finish(launched)
                self._account(record)
                # a checkpoint due at this step comes before its evaluation, which can fail (out of memory)
                if save_due and self._save_unless_bad(step, record):
                    saved_at = step
                if eval_due:
                    val_loss = self.evaluate(step)
                    if val_loss is not None:
                        self._say(f"step {step}: validation loss {val_loss:.4f}")
                if stopping:
                    if saved_at != step and self._save_unless_bad(step, record):
                        saved_at = step
                    newest = latest_checkpoint(self.run_dir)
                    self._say(f"{stop.requested or 'a signal on another rank'}: stopped after step {step}; the "
                              f"newest checkpoint is {newest.name if newest else 'none'}; continue with --resume")
                    return TrainResult(str(self.run_dir), step, self.losses, val_loss, stopped_by_signal=True)
            self.bar.close()
            self.bar = None
            final_step = config.steps
            # saved before the evaluation, so a failure there (out of memory, a CUDA error) keeps the run's work
            if saved_at < final_step and self.start_step < final_step:
                self._save_unless_bad(final_step, record)
            # the run's work is saved: a signal from here on skips what is left (the evaluation, the sample)
            if distributed.any_rank(stop.requested is not None, self.device):
                self._say(f"{stop.requested or 'a signal on another rank'}: the run is complete and saved; "
                          f"its final evaluation and sample are skipped")
                return TrainResult(str(self.run_dir), final_step, self.losses, val_loss)
            # a resume of a finished run evaluates again but does not log the same line twice
            val_loss = self.evaluate(final_step, log=self.start_step < final_step)
            if val_loss is not None:
                self._say(f"validation loss {val_loss:.4f} (perplexity {_perplexity(val_loss):.2f}) "
                          f"at step {final_step}")
            stop.restore()  # rank 0 alone samples: Ctrl-C now ends the sample at once
            try:
                if stop.requested:  # during the evaluation
                    raise KeyboardInterrupt
                sample = self.sample()
            except KeyboardInterrupt:
                self._say("stopped: the sample is skipped; the run is complete and saved", error=True)
                sample = None
            return TrainResult(str(self.run_dir), final_step, self.losses, val_loss, sample=sample)
        finally:
            if self.bar is not None:
                self.bar.close()
                self.bar = None
            stop.restore()
            self.metrics.close()

    def _account(self, record: dict) -> None:
        """Log a finished step, count a skipped update (stopping after too many in a row), show progress."""
        step = record["step"]
        self.metrics.log(record)
        if step == self.start_step + 1:
            self._report_compile_fallback()
        if record.get("skipped"):
            self.bad_in_a_row += 1
            if self.first_bad_step is None:
                self.first_bad_step = step
            self._say(self._bad_step_warning(step, record, self.bad_in_a_row), error=True)
            if self.bad_in_a_row >= self.config.max_bad_steps:
                raise self._diverged(step, self.bad_in_a_row)
        else:
            self.bad_in_a_row = 0
            self.losses[step] = record["loss"]
        shown = record["loss"] if record["loss"] is not None else math.nan
        self.bar.set_postfix(loss=f"{shown:.4f}", lr=f"{record['lr']:.2e}", tok_s=f"{record['tokens_per_s']:.0f}",
                             refresh=False)
        self.bar.update(1)

    def sample(self) -> str | None:
        # rank 0 alone; a sharded model is read back whole from the final checkpoint (no collectives)
        if not self.is_main or self.config.sample_tokens <= 0:
            return None
        from ..data import load_tokenizer_from_data_dir
        from .sample import sample_text

        newest = latest_checkpoint(self.run_dir)
        one_process = self.model.mesh is None
        if not one_process and newest is None:
            return None  # the last step was not finite, so nothing was saved to sample from
        model = self.model.model if one_process else load_model(newest, self.device)
        tokenizer = load_tokenizer_from_data_dir(self.data_dir)
        text = sample_text(model, tokenizer, self.config.sample_prompt, self.config.sample_tokens, self.device)
        self._say(f"greedy sample ({self.config.sample_tokens} tokens at most):\n{text}")
        return text


def keep_gradients_allocated(model: torch.nn.Module) -> None:
    """Give every trainable parameter a zero .grad that zero_grad(set_to_none=False) then keeps. Under CUDA
    graphs (--compile-mode reduce-overhead) the backward's gradients live in the graphs' memory pool, and
    autograd would install the first micro-batch's gradient as .grad without a copy; the next replay then
    overwrites it (pytorch/pytorch#169545: accumulation silently loses micro-batches). With .grad already
    allocated, autograd adds into it instead."""
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)


def _perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf


__all__ = ["train", "check_run", "TrainResult", "TrainingDiverged"]
