"""The training engine: one loop for every task, on Hugging Face `accelerate`.

`accelerate` owns the processes and devices (DDP across GPUs or machines, FSDP / DeepSpeed through its
config, gloo on CPUs, bf16 / fp16 autocast and loss scaling); this loop owns what makes a run
reproducible:
- the global batch of every optimizer step is fixed by (seed, step): positions in a per-epoch permutation
  of the dataset, split over micro-steps and processes, and every sample's noise comes from its own
  generator keyed by (seed, step, position) (`edm.sample_generator`). Any number of processes with the
  same global batch therefore computes the same loss and gradients, and a resumed run continues
  bit-for-bit (the state holds the weights, EMA, optimizer and loss scaler; the data order is recomputed);
- Ctrl-C (or SIGTERM) saves the last completed step and exits cleanly.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields
from typing import Protocol

import torch
from torch import nn

from ..errors import MarionetteError
from .edm import sample_key
from .ema import EMA

STATE = "state"  # folder of the resumable state inside the output folder
PRECISIONS = ("no", "bf16", "fp16")
EXPORT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SCHEDULES = ("constant", "cosine")


@dataclass
class TrainSettings:
    """One run. `batch_size`: samples per process per micro-step; the global batch of an optimizer step is
    batch_size x processes x grad_accum."""
    output_dir: str
    steps: int = 1000
    batch_size: int = 1
    grad_accum: int = 1
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"     # after warm-up: constant, or cosine decay to 0 at `steps`
    max_grad_norm: float = 1.0
    ema_decay: float = 0.999          # 0: no EMA (the export then holds the last weights)
    mixed_precision: str = "no"       # no / bf16 / fp16
    gradient_checkpointing: bool = False
    seed: int = 0
    save_every: int = 500
    validate_every: int = 0           # 0: no validation videos
    log_every: int = 10
    num_workers: int = 0
    export_dtype: str = "fp32"        # fp32 / fp16 / bf16: the exported model file's floating-point type

    def __post_init__(self):
        for name in ("steps", "batch_size", "grad_accum", "save_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise MarionetteError(f"{name} must be at least 1, got {getattr(self, name)}.",
                                      f"Pass a positive --{name.replace('_', '-')}.")
        if self.mixed_precision not in PRECISIONS:
            raise MarionetteError(f"Unknown mixed precision '{self.mixed_precision}'.",
                                  f"Use one of: {', '.join(PRECISIONS)}.")
        if self.lr_schedule not in SCHEDULES:
            raise MarionetteError(f"Unknown learning-rate schedule '{self.lr_schedule}'.",
                                  f"Use one of: {', '.join(SCHEDULES)}.")
        if self.export_dtype not in EXPORT_DTYPES:
            raise MarionetteError(f"Unknown export dtype '{self.export_dtype}'.",
                                  f"Use one of: {', '.join(EXPORT_DTYPES)}.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise MarionetteError(f"ema_decay {self.ema_decay} is outside [0, 1).", "Use e.g. 0.999, or 0 for none.")

    def learning_rate_at(self, step: int) -> float:
        """Linear warm-up, then constant or a half cosine that reaches 0 at `steps` (so resuming with more
        --steps stretches the rest of the decay)."""
        if self.warmup_steps and step < self.warmup_steps:
            return self.learning_rate * (step + 1) / self.warmup_steps
        if self.lr_schedule == "cosine":
            span = max(self.steps - self.warmup_steps, 1)
            done = min(step - self.warmup_steps, span) / span
            return self.learning_rate * 0.5 * (1.0 + math.cos(math.pi * done))
        return self.learning_rate

    def resume_key(self) -> dict:
        """What must not change between a run and its resumption (the rest, e.g. steps, may)."""
        keep = ("batch_size", "grad_accum", "learning_rate", "weight_decay", "warmup_steps", "lr_schedule",
                "max_grad_norm", "ema_decay", "mixed_precision", "seed")
        return {k: getattr(self, k) for k in keep}


class Task(Protocol):
    """What the engine trains. `build()` returns the training module (an nn.Module whose parameters with
    requires_grad are trained; frozen parts may live inside it); `loss(module, batch, keys, drop)` returns
    per-sample losses [B] by calling `module(...)` (so DDP sees the forward), with `keys[i]` the noise key
    of sample i and `drop` whether this micro-step is an unconditional (dropout) one."""
    name: str

    def config(self) -> dict: ...
    def build(self) -> nn.Module: ...
    def dataset(self): ...
    def drop_probability(self) -> float: ...
    def loss(self, module: nn.Module, batch: dict, keys: list[int], drop: bool) -> torch.Tensor: ...
    def scope(self, module: nn.Module): ...
    def enable_gradient_checkpointing(self, module: nn.Module) -> None: ...
    def export(self, module: nn.Module, path: str, metadata: dict[str, str], dtype: torch.dtype) -> None: ...
    def validate(self, module: nn.Module, folder: str, step: int) -> None: ...


# ----------------------------------------------------------------------------------------- batches
def saved_config(config, left_out: dict) -> dict:
    """A task config (dataclass) as a run's state records it: options at the `left_out` values (those
    they had before the option existed) are left out, so runs saved before an option came still resume."""
    return {k: v for k, v in asdict(config).items() if k not in left_out or v != left_out[k]}


def epoch_order(size: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(size, generator=torch.Generator().manual_seed(int(seed) * 7919 + int(epoch)))


def global_batch(size: int, seed: int, step: int, total: int) -> list[int]:
    """Dataset indices of the `total` samples of optimizer step `step` (epochs follow each other)."""
    out, orders = [], {}
    for position in range(step * total, (step + 1) * total):
        epoch = position // size
        if epoch not in orders:
            orders[epoch] = epoch_order(size, seed, epoch)
        out.append(int(orders[epoch][position % size]))
    return out


def micro_slice(micro: int, rank: int, batch_size: int, processes: int) -> range:
    """Positions within the global batch that process `rank` computes at micro-step `micro`."""
    start = (micro * processes + rank) * batch_size
    return range(start, start + batch_size)


def collate(items: list[dict]) -> dict:
    """Stack the entries every item has (optional ones, e.g. masks, only when all items have them)."""
    keys = set(items[0]).intersection(*items[1:]) if len(items) > 1 else set(items[0])
    return {k: torch.stack([torch.as_tensor(item[k]) for item in items]) for k in sorted(keys)}


class _StepBatches(torch.utils.data.Sampler):
    """This process's micro-batches (dataset index lists, with their global positions) from `start`."""

    def __init__(self, size: int, settings: TrainSettings, rank: int, processes: int, start: int):
        self.size, self.s, self.rank, self.processes, self.start = size, settings, rank, processes, start

    def __iter__(self):
        total = self.s.batch_size * self.processes * self.s.grad_accum
        for step in range(self.start, self.s.steps):
            indices = global_batch(self.size, self.s.seed, step, total)
            for micro in range(self.s.grad_accum):
                yield [indices[p] for p in micro_slice(micro, self.rank, self.s.batch_size, self.processes)]

    def __len__(self):
        return max(self.s.steps - self.start, 0) * self.s.grad_accum


# ------------------------------------------------------------------------------------------- state
def _trainable(module: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def save_state(folder: str, step: int, module: nn.Module, ema: EMA | None, optimizer, scaler, info: dict) -> None:
    """Atomically replace `folder` with the state after `step` completed optimizer steps."""
    from safetensors.torch import save_file
    tmp = folder + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_file({k: v.detach().cpu().contiguous() for k, v in _trainable(module).items()},
              os.path.join(tmp, "trainable.safetensors"))
    if ema is not None:
        save_file(ema.state_dict(), os.path.join(tmp, "ema.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None},
               os.path.join(tmp, "optimizer.pt"))
    with open(os.path.join(tmp, "state.json"), "w") as f:
        json.dump(dict(info, step=step), f, indent=1, sort_keys=True)
    old = folder + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.isdir(folder):
        os.rename(folder, old)
    os.rename(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def load_state(folder: str, module: nn.Module, ema: EMA | None, optimizer, scaler, info: dict) -> int:
    """Restore a saved state into the (prepared) module, EMA, optimizer and scaler; returns its step.
    Refuses a state whose task or run settings differ (the continuation would not be the same run)."""
    from safetensors.torch import load_file
    with open(os.path.join(folder, "state.json")) as f:
        saved = json.load(f)
    saved.get("run", {}).setdefault("lr_schedule", "constant")  # states saved before the option existed
    for key in ("task", "task_config", "run"):
        if saved.get(key) != info.get(key):
            raise MarionetteError(f"The saved state in {folder} belongs to another run ({key} differs: "
                                  f"{saved.get(key)} vs {info.get(key)}).",
                                  "Resume with the same task and settings, or pass a new --output-dir.")
    params = _trainable(module)
    weights = load_file(os.path.join(folder, "trainable.safetensors"))
    if set(weights) != set(params):
        raise MarionetteError(f"The saved state in {folder} holds other parameters than this model trains.",
                              "Resume with the same task configuration.")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name])
    if ema is not None:
        ema.load_state_dict(load_file(os.path.join(folder, "ema.safetensors")))
    extra = torch.load(os.path.join(folder, "optimizer.pt"), map_location="cpu", weights_only=True)
    optimizer.load_state_dict(extra["optimizer"])
    if scaler is not None and extra["scaler"] is not None:
        scaler.load_state_dict(extra["scaler"])
    return int(saved["step"])


# -------------------------------------------------------------------------------------------- loop
@contextlib.contextmanager
def _interrupts_as_keyboard_interrupt():
    """Ctrl-C, `kill -INT` (also for a job started in the background, where shells ignore SIGINT) and
    SIGTERM (a scheduler stopping the job) all save the last step and exit."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    wanted = [s for s in ("SIGINT", "SIGTERM") if hasattr(signal, s)]
    previous = {name: signal.signal(getattr(signal, name), handler) for name in wanted}
    try:
        yield
    finally:
        for name, old in previous.items():
            signal.signal(getattr(signal, name), old)


def train(task: Task, settings: TrainSettings, command: str = "", progress: bool = True,
          on_gradients=None) -> dict:
    """Run (or resume) `task` to `settings.steps`; returns {'step', 'losses', 'export', 'module'}. The
    export (EMA weights) lands at output_dir/<task.name>.safetensors; the resumable state in
    output_dir/state. `on_gradients(step, module)`: called with the synchronised gradients of each step
    before they are clipped and applied (for inspection)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed
    # unconditional (dropout) steps leave the reference and pose branches out of the forward
    # cpu=True where no accelerator exists, so processes launched by torchrun / accelerate join over gloo
    accelerator = Accelerator(mixed_precision=settings.mixed_precision, cpu=not torch.accelerator.is_available(),
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    set_seed(settings.seed)  # model initialisation: the same on every process
    module = task.build()
    if settings.gradient_checkpointing:
        task.enable_gradient_checkpointing(module)
    module.train()
    params = list(_trainable(module).values())
    if not params:
        raise MarionetteError(f"The {task.name} task has nothing to train.", "Check its configuration.")
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    module, optimizer = accelerator.prepare(module, optimizer)
    plain = accelerator.unwrap_model(module)
    ema = EMA(_trainable(plain), settings.ema_decay) if settings.ema_decay > 0 else None
    scaler = getattr(accelerator, "scaler", None)
    info = json.loads(json.dumps({"task": task.name, "task_config": task.config(), "run": settings.resume_key()}))
    out = settings.output_dir
    state_dir = os.path.join(out, STATE)
    start = 0
    if os.path.isdir(state_dir):
        start = load_state(state_dir, plain, ema, optimizer, scaler, info)
        accelerator.print(f"[{task.name}] resumed at step {start}")
    if accelerator.is_main_process:
        os.makedirs(out, exist_ok=True)
    dataset = task.dataset()
    if len(dataset) == 0:
        raise MarionetteError(f"The {task.name} task's dataset is empty.", "Prepare the dataset first.")
    processes, rank = accelerator.num_processes, accelerator.process_index
    total = settings.batch_size * processes * settings.grad_accum
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=_StepBatches(len(dataset), settings, rank, processes, start),
        collate_fn=collate, num_workers=settings.num_workers)
    drop_p = task.drop_probability()
    losses, step, began, done_samples = [], start, time.perf_counter(), 0
    bar = None
    if progress and accelerator.is_main_process:
        from tqdm.auto import tqdm
        bar = tqdm(total=settings.steps, initial=start, desc=task.name, dynamic_ncols=True, file=sys.stderr)
    log_path = os.path.join(out, "log.csv")

    def save(at: int) -> None:
        if accelerator.is_main_process:
            save_state(state_dir, at, plain, ema, optimizer, scaler, info)
        accelerator.wait_for_everyone()

    batches = iter(loader)
    try:
        with _interrupts_as_keyboard_interrupt():
            while step < settings.steps:
                for group in optimizer.param_groups:
                    group["lr"] = settings.learning_rate_at(step)
                step_losses = []
                for micro in range(settings.grad_accum):
                    batch = next(batches)
                    positions = micro_slice(micro, rank, settings.batch_size, processes)
                    keys = [sample_key(settings.seed, step * total + p) for p in positions]
                    drop = bool(torch.rand((), generator=_drop_generator(settings.seed, step, micro)) < drop_p)
                    last = micro == settings.grad_accum - 1
                    sync = contextlib.nullcontext() if last else accelerator.no_sync(module)
                    with sync, task.scope(plain), accelerator.autocast():
                        per_sample = task.loss(module, batch, keys, drop)
                        accelerator.backward(per_sample.mean() / settings.grad_accum)
                    step_losses.append(accelerator.gather(per_sample.detach().float()))
                if on_gradients is not None:
                    on_gradients(step, plain)
                if settings.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, settings.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update(_trainable(plain), step)
                step += 1
                done_samples += total
                loss = float(torch.cat(step_losses).mean())
                losses.append(loss)
                if accelerator.is_main_process:
                    _log(log_path, step, loss, optimizer.param_groups[0]["lr"], done_samples, began)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss:.4f}")
                if step % settings.save_every == 0 and step < settings.steps:
                    save(step)
                if settings.validate_every and step % settings.validate_every == 0:
                    _validate(task, plain, ema, out, step, accelerator)
    except KeyboardInterrupt:
        accelerator.print(f"\n[{task.name}] interrupted: saving step {step} to {state_dir}")
        save(step)
        raise
    finally:
        if bar is not None:
            bar.close()
    save(step)
    export = os.path.join(out, f"{task.name}.safetensors")
    if accelerator.is_main_process:
        with (ema.applied(_trainable(plain)) if ema is not None else contextlib.nullcontext()):
            task.export(plain, export, {"training_command": command, "training_steps": str(step),
                                        "training_samples_per_step": str(total)},
                        EXPORT_DTYPES[settings.export_dtype])
    accelerator.wait_for_everyone()
    return {"step": step, "losses": losses, "export": export, "module": plain}


def _drop_generator(seed: int, step: int, micro: int) -> torch.Generator:
    return torch.Generator().manual_seed((int(seed) * 104_729 + step * 131 + micro) % (2 ** 63 - 1))


def _log(path: str, step: int, loss: float, lr: float, samples: int, began: float) -> None:
    new = not os.path.exists(path)
    elapsed = time.perf_counter() - began
    with open(path, "a") as f:
        if new:
            f.write("step,loss,lr,samples_per_s,elapsed_s\n")
        f.write(f"{step},{loss:.6f},{lr:.3g},{samples / max(elapsed, 1e-9):.3f},{elapsed:.1f}\n")


def _validate(task: Task, plain: nn.Module, ema: EMA | None, out: str, step: int, accelerator) -> None:
    if accelerator.is_main_process:
        folder = os.path.join(out, "validation")
        os.makedirs(folder, exist_ok=True)
        was_training = plain.training
        plain.eval()
        with (ema.applied(_trainable(plain)) if ema is not None else contextlib.nullcontext()), torch.no_grad():
            task.validate(plain, folder, step)
        plain.train(was_training)
    accelerator.wait_for_everyone()


def settings_from_args(args, output_dir: str) -> TrainSettings:
    """TrainSettings from an argparse namespace with the same field names (missing ones: defaults)."""
    values = {f.name: getattr(args, f.name) for f in fields(TrainSettings)
              if f.name != "output_dir" and getattr(args, f.name, None) is not None}
    return TrainSettings(output_dir=output_dir, **values)
