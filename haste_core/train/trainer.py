"""The training loop, readable top to bottom.

Each step: data → teachers encode (Phase I only) → student(x_t, t, cond, capture) → denoising loss +
Σ weight·alignment → backward → clip → optimiser → EMA → termination policies → log / checkpoint / sample.

Everything that exists only while aligning is the ``AlignmentStage`` (``train/stage.py``); when a policy fires,
the stage releases what the stopped alignments used and the training module is rebuilt around what remains. Once
the last alignment has stopped (Phase II), the data set is told that images are no longer needed, and a step
costs what a step without alignment costs. A run resumed after that point never builds a teacher.
"""

from __future__ import annotations

import gc
import logging
import time
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

from haste_core import distributed
from haste_core.config.recipe import Recipe
from haste_core.distributed import DistEnv
from haste_core.errors import CheckpointError, Preempted, RecipeError
from haste_core.eval.grid import sample_grid, save_png
from haste_core.interfaces import Objective, RunContext, Student, TrainingPair
from haste_core.plugins import Plugins
from haste_core.train import activation_checkpointing, attention_pictures, compilation, fork, probe
from haste_core.train.accumulate import accumulate, micro_slices
from haste_core.train.ema import EMA
from haste_core.train.guard import DivergenceGuard
from haste_core.train.metric_window import BYTES_PER_MB
from haste_core.train.perf import Throughput
from haste_core.train.phase import PhasePlan, Stop
from haste_core.train.report import Reporter
from haste_core.train.sharding import Sharding
from haste_core.train.signals import StopAgreement, StopRequest
from haste_core.train.stage import AlignmentStage
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
        sharded = recipe.distributed.strategy == "fsdp2"
        state = checkpoint.load_meta(resume_from) if resume_from is not None else None  # tensors: in `_load`
        if state is not None and checkpoint.is_sharded(resume_from) != sharded:
            raise CheckpointError(_strategy_mismatch(resume_from, recipe.distributed.strategy))
        forked = fork.starts_from(recipe.run_dir, resume_from)  # a sweep's branch: stop aligning after its step
        plan = PhasePlan(recipe)
        if sharded and plan.probe_every():
            raise RecipeError(
                "the gradient probe of a termination policy (probe_every > 0) takes each loss's gradient on the "
                "whole student, which FSDP2 never holds; use distributed.strategy=ddp with this policy, or a policy "
                "without the probe (fixed_step, fade, plateau)",
                "distributed.strategy",
            )
        if state is not None:
            plan.load_state_dict(fork.parent_phase(state["phase"], forked) if forked else state["phase"])
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = recipe.precision.tf32
            torch.backends.cudnn.allow_tf32 = recipe.precision.tf32
        self.evaluator = None  # in-training FID (recipe section `eval`); built first: missing weights fail at once
        if recipe.eval.every:
            from haste_core.eval.in_training import FIDEvaluator

            self.evaluator = FIDEvaluator(recipe.eval, recipe.sampling, env)
        # the build order fixes the random initial weights (the same on every rank): keep it
        torch.manual_seed(recipe.run.seed)
        self.dataset = recipe.data.build(split="train")
        self.student: Student = recipe.student.build(data=recipe.data_spec, spec=recipe.student_spec).to(device)
        self.objective: Objective = recipe.objective.build()
        ema_model = EMA.copy_of(self.student)
        # after the EMA copy: the EMA model (sampling, evaluation) never needs recomputation
        activation_checkpointing.apply(self.student, recipe.activation_checkpointing.every, recipe.student.name)
        compilation.compile_student(self.student, recipe.compile, per_block=sharded)
        self.stage = AlignmentStage(recipe, plan, device, plugins.resolve_weights)
        compilation.compile_teachers(self.stage.teachers, recipe.compile)
        if state is None and recipe.run.init_from:
            self._init_from(recipe.run.init_from, ema_model)
        self.sharding = Sharding(env, recipe.precision.dtype, ema_model) if sharded else None
        if self.sharding is not None:  # before the optimiser and the EMA: sharding replaces the parameters
            self.sharding.shard_student(self.student)
            self.sharding.shard_student(ema_model)
            for alignment in self.stage.modules().values():
                self.sharding.shard_heads(alignment)
        self.ema = EMA(self.student, recipe.ema.decay, ema_model)
        opt = recipe.optimizer
        groups = [{"params": list(self.student.parameters()), "name": "student"}, *self.stage.param_groups()]
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
        self.guard = DivergenceGuard(device, recipe.run_dir, self.stream.item_index)
        self.step = 0
        if state is not None:
            self._load(state, resume_from)
            if forked:
                stops = plan.stop_all(self.step, f"forked from {forked.parent} at step {forked.step}")
                self.stage.release(stops, self.optimizer, self.step)
        else:
            torch.manual_seed(recipe.run.seed + _TRAIN_SEED_OFFSET * (env.rank + 1))
        if not self.stage.teachers:
            self.dataset.set_images_needed(False)
        self.module = self._wrap()
        per_rank = recipe.data.global_batch_size // env.world_size
        self._micro_slices = micro_slices(per_rank, recipe.data.micro_batch_size)
        precision = recipe.precision
        self.throughput = Throughput(device, per_rank, precision.dtype, precision.tf32, recipe.perf.peak_tflops)
        grid = recipe.student_spec.grid
        self.pictures = attention_pictures.AttentionPictures(self.dataset, self.objective, grid, device)
        self.report = Reporter(env, recipe.data.global_batch_size, recipe.run_dir, recipe.run.max_steps)
        self._one, self._zero = torch.ones((), device=device), torch.zeros((), device=device)
        self.stop, self.stop_agreement = StopRequest(), StopAgreement(recipe.run.collective_timeout)
        self.run = RunContext(
            recipe=recipe,
            run_dir=recipe.run_dir,
            rank=env.rank,
            world_size=env.world_size,
            device=device,
            plugins=plugins.describe(),
            student=self.student,
            progress=lambda: (self.step, self.stage.active),
        )

    @property
    def plan(self) -> PhasePlan:
        return self.stage.plan

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
        self.report.start(self.step, self.student, self.recipe.student.name, self.stage.active)
        started, first_step = time.perf_counter(), self.step
        self.stop.install()
        try:
            while self.step < self.recipe.run.max_steps:
                self.train_step()
                with distributed.collective(f"the stop-signal agreement after step {self.step}"):
                    stop = self.stop_agreement.poll(self.stop.signum is not None)
                if stop and self.step < run.max_steps:
                    self._stop_for_signal()
            self.stop_agreement.close()
        except BaseException as exc:
            self.run.error = exc
            raise
        finally:
            self.stop.restore()
            self.plugins.train_end(self.run)
        self.report.end(self.step - first_step, time.perf_counter() - started)

    def train_step(self) -> None:
        """One optimiser step, then everything that follows it (policies, logging, saving, sampling)."""
        batch = self.dataset.finish_batch(next(self.stream))
        weights = self.stage.weights(self.step + 1)
        with self._autocast():
            pair = self.objective.training_pair(batch["x"])
        if self.throughput.flops is None:  # once per phase
            args = (self.student, self.objective, self.stage, batch, pair, weights)
            self._timed(lambda: self.throughput.count(*args))
        syncs = "all-gathers, reduce-scatters" if self.sharding is not None else "buffer broadcast, gradient all_reduce"
        collectives = f"the {self.recipe.distributed.strategy.upper()} collectives of step {self.step + 1} ({syncs})"
        with distributed.collective(collectives):
            probed = self._probe(batch, pair, weights)
            parts = accumulate(
                self.module,
                self._micro_slices,
                batch,
                pair,
                lambda part: self.stage.encode(batch["image"][part]) if self.stage.teachers else {},
                weights,
                self._autocast,
                lambda loss: self.scaler.scale(loss).backward(),
            )
        self.scaler.unscale_(self.optimizer)
        trained = [p for group in self.optimizer.param_groups for p in group["params"]]
        if self.recipe.optimizer.grad_clip:
            grad_norm = torch.nn.utils.clip_grad_norm_(trained, self.recipe.optimizer.grad_clip)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in trained if p.grad is not None])
        if callable(full := getattr(grad_norm, "full_tensor", None)):  # FSDP2: a norm over sharded gradients
            grad_norm = full()
        self._set_lr()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update()
        self.step += 1

        values = {key: value.detach() for key, value in parts.items()}
        # fp16: a non-finite gradient norm is a step the scaler skips on purpose, not a divergence
        self.guard.observe(
            self.step, self.stream.taken(), batch["x"], values.values(), None if self.scaler.is_enabled() else grad_norm
        )
        stops = self.plan.update(self.step, {**values, **probed})
        self.report.watched(self.plan)
        finite = torch.isfinite(grad_norm)  # not finite: an fp16 step the gradient scaler skipped
        values["optim/grad_norm"] = torch.where(finite, grad_norm, 0.0)
        if self.scaler.is_enabled():
            values["optim/skipped_steps"] = (~finite).float()
        values["align/active"] = self._one if self.stage.alignments else self._zero
        self.report.window.add(values)
        self._after_step(stops)

    def _after_step(self, stops: list[Stop]) -> None:
        """Policies have spoken; now metrics, the step hook, the phase change, samples, then the checkpoint (last,
        so that a checkpoint of the step a policy fired at is already a Phase-II checkpoint)."""
        run = self.recipe.run
        last = self.step == run.max_steps
        log_now = bool(stops) or last or self.step % run.log_every == 0  # a window never straddles a phase change
        save_now = last or bool(run.checkpoint_every and self.step % run.checkpoint_every == 0)
        with distributed.collective(f"the metrics and checks of step {self.step}"):
            if log_now or save_now:
                self.guard.check(self.step)  # the only read of the divergence records: no host sync on other steps
            metrics: dict[str, float] = {}
            if log_now:
                metrics = self.report.collect(self.step, self.optimizer.param_groups[0]["lr"], stops, self.plan)
                metrics.update(self.throughput.metrics(metrics["perf/step_s"]))
        if self.evaluator is not None and self.evaluator.due(self.step, last):
            metrics = {**metrics, **self._evaluate()}
        self.plugins.step_end(self.run, self.step, metrics)
        if metrics and (histograms := self.stage.histograms()):
            self.plugins.histograms(self.run, self.step, histograms)
        if stops:
            self._timed(lambda: self._terminate(stops))
        if last or (run.sample_every and self.step % run.sample_every == 0):
            self._timed(self.sample)
        if save_now:
            with distributed.collective(f"saving the checkpoint of step {self.step}"):
                self._timed(self.save_checkpoint)

    def _stop_for_signal(self) -> None:
        """Every rank has finished this step: save it (unless just saved) and end the run for a later resume."""
        run = self.recipe.run
        if not (run.checkpoint_every and self.step % run.checkpoint_every == 0):
            self._timed(self.save_checkpoint)
        signal_name = self.stop.name or "a stop signal (sent to another rank)"
        raise Preempted(
            f"{signal_name}: stopped after step {self.step} of {run.max_steps} and saved "
            f"{checkpoint.step_path(self.recipe.run_dir, self.step)}; run the same command again to resume from it"
        )

    # --- phase change ---------------------------------------------------------------------------------------

    def _terminate(self, stops: list[Stop]) -> None:
        """The stage releases what the stopped alignments used; the training module is rebuilt around the rest."""
        cuda = self.env.device.type == "cuda"
        allocated_before = torch.cuda.memory_allocated(self.env.device) if cuda else 0
        self.stage.release(stops, self.optimizer, self.step)
        self.throughput.flops = None  # the next step counts the new phase's
        compilation.note_phase_change(self.recipe.compile, self.step)
        if not self.stage.active:
            self.dataset.set_images_needed(False)
            self.stream.restart()
        self.module = None  # drop the old DDP wrapper (its hooks and buckets) before building the new one
        gc.collect()
        self.module = self._wrap()
        if cuda:
            torch.cuda.empty_cache()
            freed = (allocated_before - torch.cuda.memory_allocated(self.env.device)) / BYTES_PER_MB
            log.info(f"step {self.step}: {freed:.0f} MB of GPU memory returned")
        for stop in stops:
            self.plugins.alignment_terminated(self.run, stop.step, stop.alignment, stop.reason)

    def _wrap(self) -> nn.Module:
        """The training module for the alignments active now (DDP around it with several processes; under FSDP2
        its parts are sharded already)."""
        module = TrainStep(self.student, self.objective, self.stage.modules(), self.stage.student_capture())
        return module if self.sharding is not None else distributed.wrap_ddp(module, self.env)

    def _trained(self) -> nn.Module:
        """The modules the optimiser trains, under the names of the training module (``student.``,
        ``alignments.<label>.``): what names the optimiser state of a sharded checkpoint."""
        return nn.ModuleDict({"student": self.student, "alignments": nn.ModuleDict(self.stage.modules())})

    def _whole(self, model: nn.Module) -> nn.Module:
        """``model`` (the student or its EMA) unsharded: gathered under FSDP2 (every rank calls this), else itself."""
        return model if self.sharding is None else self.sharding.full_copy(model)

    # --- helpers ----------------------------------------------------------------------------------------------

    def _init_from(self, path: str, ema_model: nn.Module) -> None:
        """A fresh run starts from a checkpoint's weights: live → student and the alignments' heads, EMA → EMA."""
        published = read_checkpoint(path, self.plugins.registry("alignments"))
        name = self.recipe.student.name
        import_checkpoint(published, self.student, weights="model", alignments=self.stage.modules(), name=name)
        import_checkpoint(published, ema_model, weights="ema", name=name)
        log.info(f"initialised {name} from {path} ({published.layout} layout)")

    def _probe(self, batch: dict[str, Any], pair: TrainingPair, weights: dict[str, float]) -> dict[str, Tensor]:
        """The gradient probe (``haste_core.train.probe``) on the step's whole batch when a policy asks for it at
        this step; its time is logged as ``perf/probe_s`` and left out of ``perf/step_s``."""
        if not self.stage.active or not self.plan.probe_due(self.step + 1):
            return {}
        started = time.perf_counter()
        with self._autocast():
            teacher_outputs = self.stage.encode(batch["image"])
            args = (pair.x_t, pair.t, batch["cond"], pair.target, teacher_outputs, weights)
            result = probe.measure(distributed.unwrap(self.module), args, weights, self.env.device)
        health = probe.health(result)  # reads the values: the device is synchronised here
        self.report.probed(health, time.perf_counter() - started)
        return result

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
        self.report.window.exclude(time.perf_counter() - started)

    # --- checkpoints and samples ----------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """Gather every rank's RNG state; rank 0 writes atomically; every rank waits for it. A state holding a NaN or
        an infinity is never written (``DivergenceGuard.check_state``)."""
        trained = [self.student.state_dict(), self.ema.state_dict(), self.stage.state_dict()]
        self.guard.check_state(self.step, [*trained, self.optimizer.state_dict()["state"]])
        rng = distributed.all_gather_objects(checkpoint.capture_rng())
        run_dir, keep = self.recipe.run_dir, self.recipe.run.keep_checkpoints
        meta = {
            "step": self.step,
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "data": self.stream.position(),
            "phase": self.plan.state_dict(),
            "recipe": self.recipe.to_dict(),
            "plugins": self.run.plugins,
            "world_size": self.env.world_size,
        }
        path = checkpoint.step_path(run_dir, self.step, sharded=self.sharding is not None)
        if self.sharding is not None:  # every rank writes its shards
            optimizer = get_optimizer_state_dict(self._trained(), self.optimizer)
            tensors = {**self._tensor_state(), "optimizer": optimizer["state"]}
            checkpoint.save_sharded(
                tensors, {**meta, "optimizer_groups": optimizer["param_groups"]}, run_dir, self.step, keep
            )
        elif self.env.is_main:
            state = {**self._tensor_state(), "optimizer": self.optimizer.state_dict(), **meta}
            path = checkpoint.save(state, run_dir, self.step, keep)
        if self.env.is_main:
            log.info(f"step {self.step}: saved {path}")
        distributed.barrier()
        self.plugins.checkpoint_saved(self.run, self.step, path)

    def _tensor_state(self) -> dict[str, Any]:
        return {
            "student": self.student.state_dict(),
            "ema": self.ema.state_dict(),
            "alignments": self.stage.state_dict(),
        }

    def _evaluate(self) -> dict[str, float]:
        """FID-k of the EMA student (every rank draws its share); its time is not counted as training time."""
        started = time.perf_counter()
        with self._autocast():
            metrics = self.evaluator.evaluate(self._whole(self.ema.model), self.objective, self.dataset)
        self.report.window.exclude(time.perf_counter() - started)
        if self.env.is_main:
            log.info(f"step {self.step}: eval/fid {metrics['eval/fid']:.3f}")
        return metrics

    def sample(self) -> None:
        """A grid from the EMA student (eval mode), with the same noise every time, and the attention pictures of
        the live student (``train/attention_pictures.py``), drawn by rank 0 (from gathered copies under FSDP2)."""
        ema, student = self._whole(self.ema.model), self._whole(self.student)
        if self.env.is_main:
            with self._autocast():
                grid = sample_grid(ema, self.objective, self.dataset, self.recipe.sampling, self.env.device)
            path = self.recipe.run_dir / "samples" / f"step_{self.step:08d}.png"
            save_png(grid, path)
            self.plugins.samples_saved(self.run, self.step, grid, path)
            with self._autocast():
                pictures = self.pictures.draw(student, self.stage.views, self.stage.label_teachers())
            if pictures:
                attention_pictures.save(pictures, self.recipe.run_dir, self.step)
                self.plugins.images(self.run, self.step, pictures)
        distributed.barrier()  # the other ranks wait here, so no rank counts sampling as training time

    # --- resume -----------------------------------------------------------------------------------------------

    def _load(self, state: dict[str, Any], source: Any) -> None:
        if self.sharding is not None:  # each rank reads its own shards, whatever process count wrote them
            optimizer = get_optimizer_state_dict(self._trained(), self.optimizer)  # a template of the right shapes
            tensors = {**self._tensor_state(), "optimizer": optimizer["state"]}
            checkpoint.load_sharded(source, tensors)
            state = {**state, **tensors}
            optimizer_state = {"state": tensors["optimizer"], "param_groups": state["optimizer_groups"]}
        self.student.load_state_dict(state["student"])
        self.ema.load_state_dict(state["ema"])
        self.stage.load_state_dict(state["alignments"])
        if self.sharding is not None:
            set_optimizer_state_dict(self._trained(), self.optimizer, optimizer_state)
        else:
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


def _strategy_mismatch(source: Any, strategy: str) -> str:
    written = (
        "a sharded folder (distributed.strategy fsdp2)" if checkpoint.is_sharded(source) else "a single file (ddp)"
    )
    return (
        f"checkpoint {source} is {written}, but this run uses distributed.strategy={strategy}; resume it with the "
        f"strategy it was written with, or start a new run from its weights with run.init_from={source}"
    )
