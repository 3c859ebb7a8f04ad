"""The training loop, readable top to bottom.

Each step: data → teachers encode (Phase I only) → student(x_t, t, cond, capture) → denoising loss +
Σ weight·alignment → backward → clip → optimiser → EMA → termination policies → log / checkpoint / sample.

When an alignment's policy fires, that alignment, its heads and its optimiser state are dropped and the DDP
wrapper is rebuilt; when the last one stops (Phase II), the teachers are deleted, the student stops capturing
and the data set is told that images are no longer needed. From then on a step costs what a step without
alignment costs. A run resumed after that point never builds a teacher.

Termination policies may also shape Phase I (docs/termination.md): before each step the plan's weight scales
(``fade``) are set on the training module as plain floats, and every M steps, only when a policy asks for it,
the gradient probe (``haste_core/probe.py``) measures the per-term gradients outside DDP.
"""

from __future__ import annotations

import gc
import logging
import time
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor, nn

from haste_core import distributed
from haste_core.config.recipe import Recipe
from haste_core.distributed import DistEnv
from haste_core.eval.samplers import sample_grid, save_png
from haste_core.interfaces import Alignment, Capture, Objective, RunContext, Student, Teacher, TeacherOutput
from haste_core.plugins import Plugins
from haste_core.train import probe
from haste_core.train.ema import EMA
from haste_core.train.metric_window import BYTES_PER_MB, MetricWindow, check_finite, format_metrics
from haste_core.train.phase import PhasePlan, Stop
from haste_core.train.stream import DataStream
from haste_core.train.train_step import TrainStep
from haste_core.weights import checkpoint
from haste_core.weights.import_checkpoint import import_checkpoint, read_checkpoint

log = logging.getLogger("haste")

# Offsets the per-rank training seed from the model-initialisation seed, so the two streams differ.
_TRAIN_SEED_OFFSET = 1_000_003
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Trainer:
    def __init__(self, recipe: Recipe, plugins: Plugins, env: DistEnv, resume_from: Any = None) -> None:
        self.recipe, self.plugins, self.env = recipe, plugins, env
        device = env.device
        state = checkpoint.load(resume_from) if resume_from is not None else None
        self.plan = PhasePlan(recipe)
        if state is not None:
            self.plan.load_state_dict(state["phase"])
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = recipe.precision.tf32
            torch.backends.cudnn.allow_tf32 = recipe.precision.tf32

        self.evaluator = None  # in-training FID (recipe section `eval`); built first: missing weights fail at once
        if recipe.eval.every:
            from haste_core.eval.in_training import FIDEvaluator

            self.evaluator = FIDEvaluator(recipe.eval, recipe.sampling, env)
        torch.manual_seed(recipe.run.seed)  # the same initial weights on every rank
        self.dataset = recipe.data.build(split="train")
        self.student: Student = recipe.student.build(data=recipe.data_spec).to(device)
        self.objective: Objective = recipe.objective.build()
        self.ema = EMA(self.student, recipe.ema.decay)
        self.nodes = {node.label: node for node in recipe.alignments}
        self.alignments: dict[str, Alignment] = {
            label: self.nodes[label]
            .build(student=recipe.student_spec, teacher=recipe.teacher_specs[self.nodes[label].teacher])
            .to(device)
            for label in self.plan.active
        }
        if state is None and recipe.run.init_from:
            self._init_from(recipe.run.init_from)
        self.teachers: dict[str, Teacher] = {}
        for key in self._needed_teachers():
            with distributed.rank_zero_first():  # a teacher may fill a cache (weights, a self-trained model)
                teacher = recipe.teachers[key].build(
                    data=recipe.data_spec,
                    student=recipe.student_spec,
                    resolve_weights=plugins.resolve_weights,
                )
            self.teachers[key] = teacher.to(device).eval().requires_grad_(False)
        opt = recipe.optimizer
        groups = [{"params": list(self.student.parameters()), "name": "student"}]
        for label, alignment in self.alignments.items():
            if heads := list(alignment.parameters()):
                groups.append({"params": heads, "name": f"align:{label}"})
        self.optimizer = torch.optim.AdamW(
            groups, lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=recipe.precision.dtype == "fp16")
        self.stream = DataStream(
            self.dataset,
            global_batch=recipe.data.global_batch_size,
            rank=env.rank,
            world_size=env.world_size,
            seed=recipe.run.seed,
            num_workers=recipe.data.num_workers,
            device=device,
        )
        self.step = 0
        if state is not None:
            self._load(state, resume_from)
        else:
            torch.manual_seed(recipe.run.seed + _TRAIN_SEED_OFFSET * (env.rank + 1))
        if not self.teachers:
            self.dataset.set_images_needed(False)
        self.module = self._wrap()
        self.window = MetricWindow(device, recipe.data.global_batch_size)
        self._probe_log: dict[str, float] = {}  # the last gradient probe's health figures, logged once
        self._one, self._zero = torch.ones((), device=device), torch.zeros((), device=device)
        self.run = RunContext(
            recipe=recipe,
            run_dir=recipe.run_dir,
            rank=env.rank,
            world_size=env.world_size,
            device=device,
            plugins=plugins.describe(),
            student=self.student,
            step=self.step,
            active_alignments=self.plan.active,
        )

    # --- the loop -------------------------------------------------------------------------------------------

    def fit(self) -> None:
        """Train until ``run.max_steps``; the last step saves a checkpoint and a sample grid."""
        run = self.recipe.run
        if self.step >= run.max_steps:
            log.info(
                f"run '{run.name}' is already finished (step {self.step} of {run.max_steps}); its files are in "
                f"{self.recipe.run_dir}. Raise run.max_steps to train on, or choose another run.name."
            )
            return
        self.plugins.train_start(self.run)
        self._log_start()
        started, first_step = time.perf_counter(), self.step
        try:
            while self.step < self.recipe.run.max_steps:
                self.train_step()
        except BaseException as exc:
            self.run.error = exc
            raise
        finally:
            self.plugins.train_end(self.run)
        self._log_end(self.step - first_step, time.perf_counter() - started)

    def train_step(self) -> None:
        """One optimiser step, then everything that follows it (policies, logging, saving, sampling)."""
        batch = self.dataset.finish_batch(next(self.stream))
        step_module = distributed.unwrap(self.module)
        step_module.scales = self.plan.weight_scales(self.step + 1)
        with self._autocast():
            teacher_outputs = self._encode_teachers(batch["image"]) if self.teachers else {}
            pair = self.objective.training_pair(batch["x"])
            args = (pair.x_t, pair.t, batch["cond"], pair.target, teacher_outputs)
            probed = self._probe(step_module, args)
            total, parts = self.module(*args)
        del teacher_outputs, args
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)
        if self.recipe.optimizer.grad_clip:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.trained, self.recipe.optimizer.grad_clip)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.trained if p.grad is not None])
        self._set_lr()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update()
        self.step += 1
        self.run.step = self.step

        values = {key: value.detach() for key, value in parts.items()}
        stops = self.plan.update(self.step, {**values, **probed, "data/epoch": self._epochs_done()})
        for event in self.plan.watched_now:
            if self.env.is_main:
                log.info(f"step {event.step}: watch policy '{event.name}' would stop alignment now ({event.reason})")
        finite = torch.isfinite(grad_norm)  # not finite: an fp16 step the gradient scaler skipped
        values["optim/grad_norm"] = torch.where(finite, grad_norm, 0.0)
        if self.scaler.is_enabled():
            values["optim/skipped_steps"] = (~finite).float()
        values["align/active"] = self._one if self.alignments else self._zero
        self.window.add(values)
        self._after_step(stops)

    def _after_step(self, stops: list[Stop]) -> None:
        run = self.recipe.run
        last = self.step == run.max_steps
        metrics: dict[str, float] = {}
        if stops or last or self.step % run.log_every == 0:  # a window never straddles a phase change
            metrics = self._collect_metrics(stops)
        if self.evaluator is not None and self.evaluator.due(self.step, last):
            metrics = {**metrics, **self._evaluate()}
        self.plugins.step_end(self.run, self.step, metrics)
        if metrics and self.alignments:
            self._histograms()
        if stops:
            self._timed(lambda: self._terminate(stops))
        if last or (run.sample_every and self.step % run.sample_every == 0):
            self._timed(self.sample)
        if last or (run.checkpoint_every and self.step % run.checkpoint_every == 0):
            self._timed(self.save_checkpoint)

    # --- phase change ---------------------------------------------------------------------------------------

    def _terminate(self, stops: list[Stop]) -> None:
        """Drop what the stopped alignments used, rebuild the training module, then tell the plugins."""
        cuda = self.env.device.type == "cuda"
        allocated_before = torch.cuda.memory_allocated(self.env.device) if cuda else 0
        for stop in stops:
            log.info(f"step {stop.step}: alignment '{stop.alignment}' terminated ({stop.reason})")
            del self.alignments[stop.alignment]
            self._drop_optimizer_group(f"align:{stop.alignment}")
        for key in sorted(set(self.teachers) - set(self._needed_teachers())):
            teacher = self.teachers.pop(key)
            size = sum(t.numel() * t.element_size() for t in [*teacher.parameters(), *teacher.buffers()])
            log.info(f"step {self.step}: released teacher '{key}' ({size / BYTES_PER_MB:.1f} MB of weights)")
            del teacher
        if not self.plan.active:
            log.info(f"step {self.step}: Phase II: denoising loss only, no teacher, no capture")
            self.dataset.set_images_needed(False)
            self.stream.restart()
        self.run.active_alignments = self.plan.active
        self.module = None  # drop the old DDP wrapper (its hooks and buckets) before building the new one
        gc.collect()
        self.module = self._wrap()
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            freed = (allocated_before - torch.cuda.memory_allocated(self.env.device)) / BYTES_PER_MB
            log.info(f"step {self.step}: {freed:.0f} MB of GPU memory returned")
        for stop in stops:
            self.plugins.alignment_terminated(self.run, stop.step, stop.alignment, stop.reason)

    def _drop_optimizer_group(self, name: str) -> None:
        for index, group in enumerate(self.optimizer.param_groups):
            if group.get("name") == name:
                for param in group["params"]:
                    self.optimizer.state.pop(param, None)
                del self.optimizer.param_groups[index]
                return

    # --- helpers ----------------------------------------------------------------------------------------------

    def _init_from(self, path: str) -> None:
        """A fresh run starts from a checkpoint's weights: live → student, EMA → EMA, projector → repa."""
        published = read_checkpoint(path)
        repa = next((a for label, a in self.alignments.items() if self.nodes[label].name == "repa"), None)
        name = self.recipe.student.name
        import_checkpoint(published, self.student, weights="model", projector=repa, name=name)
        import_checkpoint(published, self.ema.model, weights="ema", name=name)
        log.info(f"initialised {name} from {path} ({published.layout} layout)")

    def _probe(self, step_module: TrainStep, args: tuple[Any, ...]) -> dict[str, Tensor]:
        """The gradient probe (``haste_core.train.probe``) when a policy asks for it at this step; its time is logged as
        ``perf/probe_s`` and left out of ``perf/step_s``."""
        if not self.plan.active or not self.plan.probe_due(self.step + 1):
            return {}
        started = time.perf_counter()
        weights = {label: step_module.weights[label] * step_module.scales.get(label, 1.0) for label in self.plan.active}
        result = probe.measure(step_module, args, weights, self.env.device)
        self._probe_log = probe.health(result)  # reads the values: the device is synchronised here
        seconds = time.perf_counter() - started
        self._probe_log["perf/probe_s"] = seconds
        self.window.exclude(seconds)
        return result

    def _histograms(self) -> None:
        histograms = {
            f"align/{label}/{name}": values
            for label, alignment in self.alignments.items()
            for name, values in alignment.histograms().items()
        }
        if histograms:
            self.plugins.histograms(self.run, self.step, histograms)

    def _epochs_done(self) -> Tensor:
        """Completed epochs of the training stream (a CPU float; no device sync), for ``fixed_epoch``."""
        done = self.stream.epoch + self.stream.batch / self.stream.sampler.batches_per_epoch
        return torch.tensor(done, dtype=torch.float64)  # float32 cannot tell batches apart in long epochs

    def _needed_teachers(self) -> list[str]:
        return sorted({self.nodes[label].teacher for label in self.plan.active})

    def _wrap(self) -> nn.Module:
        """The training module for the alignments active now; also what each teacher must produce for them and
        which parameters the optimiser updates."""
        self.requests = self._teacher_requests()
        self.trained = [p for group in self.optimizer.param_groups for p in group["params"]]
        active = {label: self.alignments[label] for label in self.plan.active}
        module = TrainStep(
            self.student,
            self.objective,
            active,
            weights={label: self.nodes[label].weight for label in active},
            teacher_of={label: self.nodes[label].teacher for label in active},
        )
        return distributed.wrap_ddp(module, self.env)

    def _teacher_requests(self) -> dict[str, Capture]:
        """Per teacher, the union of what its active alignments need: each teacher encodes a batch once."""
        requests = {key: Capture() for key in self.teachers}
        for label in self.plan.active:
            key = self.nodes[label].teacher
            requests[key] = requests[key] | self.alignments[label].teacher_request()
        return requests

    def _encode_teachers(self, images: Tensor) -> dict[str, TeacherOutput]:
        with torch.no_grad():
            return {
                key: teacher.encode(images, self.requests[key].hidden, self.requests[key].attn)
                for key, teacher in self.teachers.items()
            }

    def _set_lr(self) -> None:
        opt = self.recipe.optimizer
        lr = opt.lr * min(1.0, (self.step + 1) / opt.warmup_steps) if opt.warmup_steps else opt.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _autocast(self) -> AbstractContextManager[Any]:
        dtype = _AUTOCAST_DTYPES.get(self.recipe.precision.dtype)
        return torch.autocast(self.env.device.type, dtype=dtype, enabled=dtype is not None)

    def _timed(self, action: Any) -> None:
        started = time.perf_counter()
        action()
        self.window.exclude(time.perf_counter() - started)

    def _collect_metrics(self, stops: list[Stop]) -> dict[str, float]:
        metrics = self.window.reduce()
        metrics["optim/lr"] = self.optimizer.param_groups[0]["lr"]
        skipped = metrics.get("optim/skipped_steps", 0.0)
        if skipped >= 1.0:
            del metrics["optim/grad_norm"]  # every step of the window was skipped: there is no norm to show
        elif skipped > 0.0:
            metrics["optim/grad_norm"] /= 1.0 - skipped  # the mean over the steps that were taken
        for stop in stops:
            metrics[f"termination/fired/{stop.alignment}"] = float(stop.step)
        metrics.update(self._probe_log)
        self._probe_log = {}
        for name, step in self.plan.take_unlogged().items():
            metrics[f"termination/would_fire/{name}"] = float(step)
        if stops and not self.plan.active:
            metrics["termination/fired"] = float(self.step)
        check_finite(metrics, self.step, checkpoint.latest_path(self.recipe.run_dir))
        if self.env.is_main:
            log.info(format_metrics(self.step, self.recipe.run.max_steps, metrics))
        return metrics

    def _log_start(self) -> None:
        if not self.env.is_main:
            return
        count = sum(p.numel() for p in self.student.parameters())
        phase = f"Phase I ({', '.join(self.plan.active)})" if self.plan.active else "Phase II / no alignment"
        where = f"resuming at step {self.step}" if self.step else "starting"
        log.info(
            f"{where}: {self.recipe.student.name} ({count / 1e6:.2f}M parameters), {self.env.world_size} "
            f"process(es) on {self.env.device.type}, {phase}; run folder {self.recipe.run_dir}"
        )

    def _log_end(self, steps: int, seconds: float) -> None:
        if not self.env.is_main or steps == 0:
            return
        run_dir = self.recipe.run_dir
        samples = sorted((run_dir / "samples").glob("*.png"))
        log.info(f"done: {steps} steps in {seconds:.0f} s. Run folder {run_dir}:")
        log.info(f"  samples      {samples[-1] if samples else '(none)'}")
        log.info(f"  checkpoints  {checkpoint.latest_path(run_dir)}")
        log.info(f"  TensorBoard  tensorboard --logdir {run_dir / 'tensorboard'}")

    # --- checkpoints and samples ----------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """Gather every rank's RNG state; rank 0 writes atomically; every rank waits for it."""
        rng = distributed.all_gather_objects(checkpoint.capture_rng())
        path = checkpoint.step_path(self.recipe.run_dir, self.step)
        if self.env.is_main:
            state = {
                "step": self.step,
                "student": self.student.state_dict(),
                "ema": self.ema.state_dict(),
                "alignments": {label: a.state_dict() for label, a in self.alignments.items()},
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng,
                "data": self.stream.position(),
                "phase": self.plan.state_dict(),
                "recipe": self.recipe.to_dict(),
                "plugins": self.run.plugins,
                "world_size": self.env.world_size,
            }
            path = checkpoint.save(state, self.recipe.run_dir, self.step, self.recipe.run.keep_checkpoints)
            log.info(f"step {self.step}: saved {path}")
        distributed.barrier()
        self.plugins.checkpoint_saved(self.run, self.step, path)

    def _evaluate(self) -> dict[str, float]:
        """FID-k of the EMA student (every rank draws its share); its time is not counted as training time."""
        started = time.perf_counter()
        with self._autocast():
            metrics = self.evaluator.evaluate(self.ema.model, self.objective, self.dataset)
        self.window.exclude(time.perf_counter() - started)
        if self.env.is_main:
            log.info(f"step {self.step}: eval/fid {metrics['eval/fid']:.3f}")
        return metrics

    def sample(self) -> None:
        """A grid from the EMA student (eval mode), with the same noise every time, drawn by rank 0."""
        if self.env.is_main:
            with self._autocast():
                grid = sample_grid(self.ema.model, self.objective, self.dataset, self.recipe.sampling, self.env.device)
            path = self.recipe.run_dir / "samples" / f"step_{self.step:08d}.png"
            save_png(grid, path)
            self.plugins.samples_saved(self.run, self.step, grid, path)
        distributed.barrier()  # the other ranks wait here, so no rank counts sampling as training time

    # --- resume -----------------------------------------------------------------------------------------------

    def _load(self, state: dict[str, Any], source: Any) -> None:
        self.student.load_state_dict(state["student"])
        self.ema.load_state_dict(state["ema"])
        for label, alignment in self.alignments.items():
            alignment.load_state_dict(state["alignments"][label])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.stream.load_position(state["data"])
        self.step = int(state["step"])
        rng = state["rng"]
        if len(rng) == self.env.world_size:
            checkpoint.restore_rng(rng[self.env.rank])
        else:
            log.warning(
                f"checkpoint {source} was written by {len(rng)} processes, this run has {self.env.world_size}: "
                "random streams restart from the seed, so results will differ from an uninterrupted run"
            )
            torch.manual_seed(self.recipe.run.seed + _TRAIN_SEED_OFFSET * (self.env.rank + 1) + self.step)
        log.info(f"resumed from {source} at step {self.step}")
