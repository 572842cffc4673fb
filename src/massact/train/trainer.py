"""Train a GPT-2- or LLaMA-shaped model of one design: AdamW or Muon, warm-up then cosine or constant learning rate,
clipping, accumulation, checkpoints, monitor.

Runs on one CPU, one GPU (bf16 autocast) or many GPUs through `accelerate` (start with
`accelerate launch -m massact train gpt2 ...` or `torchrun --nproc_per_node N -m massact train gpt2 ...`).
"""

from __future__ import annotations

import csv
import io
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console

from massact.errors import MassactError
from massact.html.registry import result_kind
from massact.outputs import atomic_write_text, staged_output, write_json
from massact.progress import bar as progress_bar
from massact.progress import say
from massact.residual.layout import is_norm
from massact.train.build import build_model
from massact.train.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from massact.train.config import TrainConfig
from massact.train.data import TokenData, batch_seed
from massact.train.measures import summarize_blocks
from massact.train.monitor import ActivationMonitor
from massact.train.run_report import plot_run, run_markdown, run_verdict

KIND = "train"  # the `kind` field of the JSON: which result this is
RERUN = "rerun the same command with --resume to continue from it"  # `massact train gpt2` after Ctrl-C


@result_kind(KIND, "summary.json")
@dataclass
class TrainResult:
    """What a finished (or resumed-and-finished) run produced: its logs, the monitor's rows, the final measures."""

    run_dir: Path
    step: int
    val_log: list[dict] = field(default_factory=list)
    monitor_rows: list[dict] = field(default_factory=list)
    emergence: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    config: dict = field(default_factory=dict)
    parameters: int = 0
    main_process: bool = True  # False on the other processes of a multi-GPU run (they write nothing)
    diverged_at: int | None = None  # the step whose loss was not finite (training stopped there), or None

    @property
    def final_val_loss(self) -> float:
        return self.val_log[-1]["val_loss"] if self.val_log else math.nan

    @property
    def final_blocks(self) -> list[dict]:
        """The monitor's rows of the last recorded step, by block."""
        if not self.monitor_rows:
            return []
        last = max(r["step"] for r in self.monitor_rows)
        return sorted((r for r in self.monitor_rows if r["step"] == last), key=lambda r: r["block"])

    def to_json(self) -> dict:
        """What summary.json holds."""
        return {
            "kind": KIND,
            "config": self.config,
            "step": self.step,
            "final_val_loss": self.final_val_loss,
            "train_seconds": self.train_seconds,
            "parameters": self.parameters,
            "diverged_at": self.diverged_at,
            "final": summarize_blocks(self.final_blocks) if self.final_blocks else {},
            "final_blocks": self.final_blocks,
            "emergence": self.emergence,
        }

    def show(self, console: Console) -> None:
        console.print(f"step {self.step}: validation loss {self.final_val_loss:.4f}", markup=False)
        if self.final_blocks:
            console.print(run_verdict(self.final_blocks), markup=False, highlight=False, soft_wrap=True)

    def write(self, out: Path) -> None:
        """summary.json, report.md and figures/ into `out` (the run directory already holds the checkpoint,
        val_log.csv and monitor.*)."""
        data = self.to_json()
        write_json(out / "summary.json", data)
        figures = out / "figures"
        figures.mkdir(parents=True, exist_ok=True)
        plot_run(data, self.monitor_rows, self.val_log, figures)
        atomic_write_text(out / "report.md", run_markdown(data))

    def save_summary(self) -> None:
        """Write the run's files into the run directory through the staged output (main process only)."""
        if self.main_process:
            with staged_output(self.run_dir) as staging:
                self.write(staging)


def norm_gains(model: torch.nn.Module) -> set[int]:
    """Ids of the norms' gains (LayerNorm and RMSNorm weights), found as the rewrite finds norms."""
    return {id(module.weight) for module in model.modules() if is_norm(module)}


def _adamw(model: torch.nn.Module, params: list[torch.nn.Parameter], config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices (and the norms' gains with `decay_norm_gains`), not on biases or the
    1-D k', v', sink and sink logits."""
    gains = norm_gains(model) if config.decay_norm_gains else set()
    decay = [p for p in params if p.dim() >= 2 or id(p) in gains]
    no_decay = [p for p in params if p.dim() < 2 and id(p) not in gains]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(config.beta1, config.beta2))


def make_optimizers(model: torch.nn.Module, config: TrainConfig) -> list[torch.optim.Optimizer]:
    """[AdamW] or, for `optimizer="muon"`, [Muon on the blocks' linear weights, AdamW on the rest].

    The rest: embeddings, norms, biases, and the variants' own parameters (k', v', sink logits).
    Muon's update is scaled to AdamW's RMS (`match_rms_adamw`), so both take the same learning rate.
    """
    if config.optimizer == "adamw":
        return [_adamw(model, list(model.parameters()), config)]
    hidden = {id(m.weight) for m in model.blocks.modules() if isinstance(m, torch.nn.Linear)}
    matrices = [p for p in model.parameters() if id(p) in hidden]
    rest = [p for p in model.parameters() if id(p) not in hidden]
    muon = torch.optim.Muon(
        matrices, lr=config.learning_rate, weight_decay=config.weight_decay, adjust_lr_fn="match_rms_adamw"
    )
    return [muon, _adamw(model, rest, config)]


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig):
    """Linear warm-up, then cosine decay to `min_lr` or (`schedule="constant"`) the peak learning rate."""
    from transformers import get_constant_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup

    if config.schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, config.warmup_steps)
    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, config.warmup_steps, config.max_steps, min_lr=config.min_lr
    )


@torch.no_grad()
def evaluate(model: torch.nn.Module, windows: torch.Tensor, batch_size: int, device: torch.device, autocast) -> float:
    """Mean next-token loss over fixed validation windows (model in eval mode)."""
    was_training = model.training
    model.eval()
    total = 0.0
    count = 0
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size].to(device)
        with autocast():
            loss = model(input_ids=batch, labels=batch).loss
        total += float(loss) * len(batch)
        count += len(batch)
    model.train(was_training)
    return total / count


def _finite_everywhere(accelerator, loss: float) -> bool:
    """Whether the step's loss is finite on every process (they all stop together when one diverges)."""
    bad = torch.tensor(0.0 if math.isfinite(loss) else 1.0, device=accelerator.device)
    return float(accelerator.reduce(bad, reduction="sum")) == 0.0


def _write_val_log(run_dir: Path, val_log: list[dict]) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=["step", "train_loss", "val_loss", "tokens"])
    writer.writeheader()
    writer.writerows(val_log)
    atomic_write_text(run_dir / "val_log.csv", text.getvalue())


def train(
    config: TrainConfig,
    data: TokenData,
    run_dir: Path,
    *,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    rerun: str = RERUN,
) -> TrainResult:
    """Train `config` on `data` into `run_dir` (checkpoint, val_log.csv, monitor.*; each file replaced atomically).

    The result's `write(out)` (or `save_summary()`) adds summary.json.

    `resume` continues from the run's last checkpoint (same config required); without it an
    existing checkpoint is an error. `stop_after` ends early after that step (for tests),
    checkpointing first, as an interruption would. `rerun` is what Ctrl-C's message tells the user to do
    next (the command that called it knows how it continues).
    """
    from accelerate import Accelerator

    data.check(config)
    existing = find_checkpoint(run_dir)
    if existing is not None and not resume:
        raise MassactError(
            f"{run_dir} already holds a checkpoint; pass `resume=True` to continue it or choose another `run_dir`"
        )
    cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
    bf16 = not cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    accelerator = Accelerator(cpu=cpu, mixed_precision="bf16" if bf16 else "no")
    torch.manual_seed(config.seed)
    model = build_model(config.model)
    optimizers = make_optimizers(model, config)
    schedulers = [make_scheduler(optimizer, config) for optimizer in optimizers]
    monitor = ActivationMonitor(
        data.windows(config.probe_sequences, config.model.block_size),
        every=config.monitor_interval,
        out_dir=run_dir if accelerator.is_main_process else None,
    )
    step, val_log, elapsed, diverged_at = 0, [], 0.0, None
    model = model.to(accelerator.device)
    if existing is not None:
        state = load_checkpoint(existing, model, optimizers, schedulers, config)
        step, val_log, elapsed = state["step"], state["val_log"], state.get("train_seconds", 0.0)
        diverged_at = state.get("diverged_at")
        monitor.restore(state["monitor_rows"], step)
    model, *optimizers = accelerator.prepare(model, *optimizers)
    raw = accelerator.unwrap_model(model)
    val_windows = data.windows(config.eval_batches * config.batch_size, config.model.block_size)
    rank = accelerator.process_index

    def checkpoint() -> None:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            state = {
                "step": step,
                "config": config.to_dict(),
                "val_log": val_log,
                "monitor_rows": monitor.rows,
                "train_seconds": elapsed,
                "diverged_at": diverged_at,
            }
            save_checkpoint(run_dir, raw, optimizers, schedulers, state, data.tokenizer)

    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        if step == 0:
            monitor.record(raw, 0)
    bar = progress_bar(
        config.max_steps,
        f"{config.model.arch} {config.model.attention}",
        "step",
        progress and accelerator.is_main_process,
        step,
    )
    tokens_per_step = config.tokens_per_step * accelerator.num_processes
    model.train()
    try:
        while step < config.max_steps and diverged_at is None:
            started = time.perf_counter()
            loss_sum = 0.0
            for micro in range(config.grad_accum):
                batch = data.batch(
                    config.batch_size, config.model.block_size, batch_seed(config.seed, step, micro, rank)
                ).to(accelerator.device)
                sync = micro == config.grad_accum - 1
                context = accelerator.no_sync(model) if not sync else nullcontext()
                with context, accelerator.autocast():
                    loss = model(input_ids=batch, labels=batch).loss / config.grad_accum
                    accelerator.backward(loss)
                loss_sum += float(loss.detach())
            accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
            for optimizer, scheduler in zip(optimizers, schedulers, strict=True):
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            step += 1
            elapsed += time.perf_counter() - started
            bar.update(1)
            bar.set_postfix_str(f"loss {loss_sum:.3f}, {tokens_per_step * bar.n / max(elapsed, 1e-9):.0f} tokens/s")
            if not _finite_everywhere(accelerator, loss_sum):
                diverged_at = step  # nothing more to learn: measure, checkpoint and stop here
            last = step == config.max_steps or diverged_at is not None
            if step % config.eval_interval == 0 or last:
                val = evaluate(raw, val_windows, config.batch_size, accelerator.device, accelerator.autocast)
                val_log.append(
                    {"step": step, "train_loss": loss_sum, "val_loss": val, "tokens": step * tokens_per_step}
                )
                if progress and accelerator.is_main_process:  # stderr: stdout stays clean for --json
                    say(f"step {step}: train loss {loss_sum:.4f}, val loss {val:.4f}")
                if accelerator.is_main_process:
                    _write_val_log(run_dir, val_log)
            if accelerator.is_main_process and (monitor.due(step) or last):
                monitor.record(raw, step)
            if step % config.checkpoint_interval == 0 or last:
                checkpoint()
            if diverged_at is not None and progress and accelerator.is_main_process:
                say(f"step {step}: the training loss is {loss_sum}: the run diverged; training stopped here")
            if stop_after is not None and step >= stop_after:
                checkpoint()
                break
    except KeyboardInterrupt:
        bar.close()
        saved = find_checkpoint(run_dir)
        if saved is None:
            kept = (
                f"no checkpoint yet (one every {config.checkpoint_interval} steps): nothing to continue; "
                "the same command starts this run again"
            )
        else:
            kept = f"the last checkpoint is in {saved}: {rerun}"
        # the command line prints it after "massact: interrupted;", exit 130
        raise KeyboardInterrupt(f"stopped at step {step}; {kept}") from None
    finally:
        bar.close()
        monitor.close()
    return TrainResult(
        run_dir,
        step,
        val_log,
        monitor.rows,
        monitor.emergence(),
        elapsed,
        config=config.to_dict(),
        parameters=raw.num_parameters(),
        main_process=accelerator.is_main_process,
        diverged_at=diverged_at,
    )
