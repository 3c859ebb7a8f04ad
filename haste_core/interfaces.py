"""The component interfaces every plugin implements, and the small records passed between them.

Shapes: B batch, N tokens, D width, H heads, C channels. Block indices are 0-based ("the output of block 7" is
the output of the 8th block). Every component class nests a ``@dataclass(kw_only=True, frozen=True) class
Config`` holding its recipe settings and is constructed as ``cls(config, **fixed, **runtime)``, where
``fixed`` come from its registration and ``runtime`` are the keyword arguments listed on each class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

# --- records --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSpec:
    """What a data set yields, known before anything is loaded.

    ``x_shape`` is C×H×W of what the student denoises (pixels or latents); ``image_shape`` is C×H×W of the
    uint8 images given to teachers; ``num_classes`` is 0 for unconditional or text-conditioned data.
    Text-conditioned data sets give ``text_len`` tokens of width ``text_dim`` per caption and, when
    ``pooled_dim`` > 0, a pooled caption vector (see ``Dataset`` for the item layout).
    """

    x_shape: tuple[int, int, int]
    image_shape: tuple[int, int, int]
    num_classes: int
    num_items: int
    text_len: int = 0
    text_dim: int = 0
    pooled_dim: int = 0
    unavailable: str = ""  # why the data cannot be read yet and how to make it; --check notes it, a run stops


@dataclass(frozen=True)
class StudentSpec:
    """The dimensions of a student, known before it is built (used to validate alignments)."""

    name: str
    depth: int
    hidden_size: int
    num_heads: int
    grid: int  # tokens per side


@dataclass(frozen=True)
class TeacherSpec:
    """The dimensions of a teacher as it will run for this student (``grid`` after its resize).

    ``grid`` is the grid the teacher runs at (its attention maps are grid²×grid²); ``token_grid`` is the grid of
    the tokens it returns, which differs when it resamples them to the student's grid (None: same as ``grid``).
    """

    name: str
    depth: int
    embed_dim: int
    num_heads: int
    grid: int  # patch tokens per side
    token_grid: int | None = None  # grid of the returned tokens; filled in with ``grid`` when not given

    def __post_init__(self) -> None:
        if self.token_grid is None:
            object.__setattr__(self, "token_grid", self.grid)


@dataclass(frozen=True)
class Capture:
    """Block indices whose output tokens (``hidden``) and pre-softmax attention logits (``attn``) are wanted."""

    hidden: frozenset[int] = frozenset()
    attn: frozenset[int] = frozenset()

    def __or__(self, other: Capture) -> Capture:
        return Capture(self.hidden | other.hidden, self.attn | other.attn)

    def __bool__(self) -> bool:
        return bool(self.hidden or self.attn)


@dataclass
class StudentOutput:
    """``pred``: same shape as x_t (twice its channels for a ``learn_sigma`` student); ``hidden``: {block: B×N×D};
    ``attn_logits``: {block: B×H×N×N}."""

    pred: Tensor
    hidden: dict[int, Tensor] = field(default_factory=dict)
    attn_logits: dict[int, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class AttentionView:
    """What an alignment compares attention maps of, for the attention pictures (``Alignment.attention_view``).

    ``pairs``: a picture name (``pair_4_8``) -> (student block, teacher block). ``map_heads(name, logits)`` turns
    the student's logits B×H_s×Q×N of that pair into the B×H_t×Q×N the loss compares with the teacher's."""

    pairs: Mapping[str, tuple[int, int]]
    map_heads: Callable[[str, Tensor], Tensor]


@dataclass
class TeacherOutput:
    """``tokens``: {block: B×N×D} patch tokens; ``attn_logits``: {block: B×H×N×N} over patch queries and keys."""

    tokens: dict[int, Tensor] = field(default_factory=dict)
    attn_logits: dict[int, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingPair:
    """What an objective makes of a clean batch: the corrupted input, its time, and the regression target."""

    x_t: Tensor
    t: Tensor  # B, in [0, 1]; 0 is data, 1 is noise
    target: Tensor


@dataclass(frozen=True)
class Fired:
    """Returned by ``Termination.update`` when the policy decides to stop aligning."""

    reason: str


@dataclass(frozen=True)
class PolicyContext:
    """What a termination policy knows of its run when it is bound: the step budget and the optimiser steps per
    pass over the training set (one global batch per step)."""

    max_steps: int
    steps_per_epoch: int


def _no_progress() -> tuple[int, list[str]]:
    return 0, []


@dataclass
class RunContext:
    """What lifecycle hooks see of a run. One object per process; ``step`` and ``active_alignments`` read the
    trainer's own state, so they are always current."""

    recipe: Any  # haste_core.config.recipe.Recipe
    run_dir: Path
    rank: int
    world_size: int
    device: torch.device
    plugins: list[dict[str, Any]]
    student: nn.Module | None = None  # the live student (not DDP-wrapped); read it, do not replace it
    progress: Callable[[], tuple[int, list[str]]] = _no_progress  # (step, active alignment labels), read-through
    error: BaseException | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def step(self) -> int:
        """The optimiser steps completed so far (0 before the first; a resumed run starts at its checkpoint's)."""
        return self.progress()[0]

    @property
    def active_alignments(self) -> list[str]:
        """Labels of the alignments still trained (empty in Phase II)."""
        return self.progress()[1]


# --- components -----------------------------------------------------------------------------------------------


class Component:
    """What every component class has: a nested ``Config`` and a way to make a small valid one."""

    Config: ClassVar[type]

    @classmethod
    def example_config(cls, **specs: Any) -> Any:
        """A small valid ``Config`` for contract tests (``haste_core.testing``), given the specs the component
        is built with (``student=``, ``teacher=``). Override it when ``Config`` has required fields."""
        return cls.Config()

    @classmethod
    def hub_files(cls, config: Any, **fixed: Any) -> list[Any]:
        """The hub files (``haste_core.weights.hub.HubFile``) this config loads, for ``haste prefetch`` and
        ``haste check``; none by default."""
        return []


class Dataset(Component, torch.utils.data.Dataset, ABC):
    """A map-style training set. Runtime arguments: ``split`` ("train" or "heldout").

    ``dataset[i]`` returns ``{"image": uint8 C×H×W (for teachers), "x": float C×H×W (for the student),
    "cond": ...}``; ``image`` may be left out after ``set_images_needed(False)``. ``cond`` is an int64 class id
    for class-conditional data, or for text-conditioned data a dict ``{"text": float L×D caption token
    embeddings, "text_mask": bool L (True = a real token), "pooled": float P (only when pooled_dim > 0)}``.
    Items must be a deterministic function of the index, so that a resumed run sees exactly the batches an
    uninterrupted one would.
    """

    @classmethod
    @abstractmethod
    def describe(cls, config: Any) -> DataSpec:
        """Shapes and sizes, without loading the data; raise ``RecipeError`` for missing files."""

    @property
    @abstractmethod
    def spec(self) -> DataSpec:
        """The same record as ``describe`` gave."""

    @abstractmethod
    def to_images(self, x: Tensor) -> Tensor:
        """Turn a batch of what the student produces (B×C×H×W) into uint8 images for viewing."""

    @classmethod
    def scoring_config(cls, config: Any) -> Any:
        """The config to build this data set with when its ``to_images`` output is scored (``haste sample``): a
        set that can show latents as cheap previews returns one that decodes them. By default ``config``."""
        return config

    def set_images_needed(self, needed: bool) -> None:
        """Told False when no teacher needs images any more (Phase II); a data set may then stop loading them."""

    def finish_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Called with each training batch once it is on the training device, before the objective sees it: the
        place for per-step randomness drawn from the global RNG (which checkpoints restore), such as a VAE
        posterior sample. Returns the batch; by default unchanged."""
        return batch

    def sample_conds(self, n: int) -> Tensor | dict[str, Tensor]:
        """The conditions of ``n`` sample-grid images, batched like ``cond`` (class ids ``i % num_classes`` by
        default; a text data set returns a dict of n captions, e.g. from its held-out captions)."""
        return torch.arange(n) % max(self.spec.num_classes, 1)

    def sample_conds_at(self, indices: list[int]) -> Tensor | dict[str, Tensor]:
        """The conditions ``sample_conds`` gives the images ``indices`` (generation asks batch by batch, up to
        index 50,000). By default sliced from ``sample_conds(max(indices) + 1)``; override it when that is costly."""
        conds = self.sample_conds(max(indices) + 1)
        if isinstance(conds, dict):
            return {key: value[indices] for key, value in conds.items()}
        return conds[indices]


class Student(Component, nn.Module, ABC):
    """A denoising transformer. Runtime arguments: ``data`` (a ``DataSpec``) and ``spec`` (the ``StudentSpec``
    that ``describe`` gave for this config and data, computed once when the recipe was validated).

    ``forward(x_t, t, cond, capture)`` returns a ``StudentOutput``. Blocks not named in ``capture`` must use
    fused attention; a block whose attention is captured computes its logits once and uses them for its own
    output. Label (or caption) dropout for classifier-free guidance happens inside, in training mode only.
    ``cond`` is what the data set yields (class ids, or the text dict described under ``Dataset``).
    A student with ``learn_sigma`` predicts 2C channels: the objective's target, then the variance values.
    ``zero_init``: the prediction is exactly 0 at initialisation (adaLN-Zero), checked by the contract tests.
    """

    depth: int
    hidden_size: int
    num_heads: int
    grid: int
    learn_sigma: bool = False
    zero_init: bool = False

    @classmethod
    def example_data(cls) -> DataSpec:
        """Data this student can read, for contract tests: 4-channel 16×16 latents with 10 classes by default."""
        return DataSpec(x_shape=(4, 16, 16), image_shape=(3, 16, 16), num_classes=10, num_items=64)

    @classmethod
    @abstractmethod
    def describe(cls, config: Any, *, data: DataSpec, **fixed: Any) -> StudentSpec:
        """Dimensions for this config and data, without building anything."""

    @abstractmethod
    def forward(self, x_t: Tensor, t: Tensor, cond: Any, capture: Capture | None = None) -> StudentOutput:
        """Predict the objective's target for x_t (B×C×H×W) at times t (B)."""

    @abstractmethod
    def null_cond(self, cond: Any) -> Any:
        """The unconditional counterpart of ``cond`` (the null class or null caption), for guidance."""

    @classmethod
    def from_published(cls, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """This student's ``state_dict`` named as ours, from the student tensors of a checkpoint of the reference
        code (REPA/HASTE, official DiT); the inverse of ``to_published``. SiT and DiT name their keys as we do
        (identity); a family whose reference layout differs translates here. Tensors that layout lacks are not made
        up: ``import_checkpoint(supply=...)`` gives them."""
        return dict(tensors)

    @classmethod
    def to_published(cls, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """This student's ``state_dict`` in the reference code's layout (what its ``generate.py`` loads); raises
        ``CheckpointError`` when this configuration has no counterpart there."""
        return dict(state)


class Teacher(Component, nn.Module, ABC):
    """A frozen vision encoder. Runtime arguments: ``data`` (``DataSpec``), ``student`` (``StudentSpec``),
    ``spec`` (its own ``TeacherSpec``, from ``describe`` at validation), ``resolve_weights`` (callable
    ``(kind, name) -> Path | None``, the ``haste_resolve_weights`` hook).

    It owns its preprocessing (uint8 in, resized so its patch grid matches the student's), stays in eval mode
    without gradients, and runs only as many blocks as the deepest one requested. Block -1 means the final
    normalised patch tokens. Returned tokens and attention logits cover patch tokens only (class and register
    tokens removed); consumers renormalise attention over the patch keys.
    """

    depth: int
    embed_dim: int
    num_heads: int
    grid: int

    @classmethod
    def example_data(cls) -> DataSpec:
        """Data this teacher can read, for contract tests: 3-channel 16×16 images unless overridden."""
        return DataSpec(x_shape=(4, 16, 16), image_shape=(3, 16, 16), num_classes=10, num_items=64)

    @classmethod
    @abstractmethod
    def describe(cls, config: Any, *, data: DataSpec, student: StudentSpec, **fixed: Any) -> TeacherSpec:
        """Dimensions for this config, data and student, without loading weights."""

    @abstractmethod
    def encode(self, images: Tensor, blocks: frozenset[int], attn_blocks: frozenset[int]) -> TeacherOutput:
        """Encode uint8 images B×C×H×W; return tokens of ``blocks`` and attention logits of ``attn_blocks``."""


class Alignment(Component, nn.Module, ABC):
    """A Phase-I loss pulling the student towards a teacher. It owns its trainable heads (projectors).

    Runtime arguments: ``student`` (``StudentSpec``), ``teacher`` (``TeacherSpec``). ``forward`` returns the
    unweighted loss as an fp32 scalar and a dict of extra fp32 scalar metrics (logged as
    ``align/<label>/<key>``); the trainer multiplies the loss by the recipe's ``weight``.

    Checkpoints of the published REPA/HASTE code keep an alignment's heads beside the student's weights, under a
    prefix: ``published_prefix`` names it (REPA's projector: ``projectors.0.``; empty: this loss has no such
    heads), and ``from_published``/``to_published`` translate the keys below it. ``run.init_from`` and checkpoint
    import use them, and they tell which tensors of such a file are not the student's.
    """

    published_prefix: ClassVar[str] = ""

    @classmethod
    @abstractmethod
    def check(cls, config: Any, *, student: StudentSpec, teacher: TeacherSpec) -> None:
        """Raise ``RecipeError`` (path relative to this node) if config, student and teacher do not fit."""

    @abstractmethod
    def student_capture(self) -> Capture:
        """What the student must expose for this loss."""

    @abstractmethod
    def teacher_request(self) -> Capture:
        """What the teacher must produce: ``hidden`` are token blocks, ``attn`` attention blocks."""

    @abstractmethod
    def forward(self, student: StudentOutput, teacher: TeacherOutput) -> tuple[Tensor, dict[str, Tensor]]:
        """The unweighted loss (fp32 scalar) and extra metrics."""

    @classmethod
    def from_published(cls, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """This alignment's ``state_dict`` from the tensors a published checkpoint keeps under
        ``published_prefix`` (the prefix removed); the inverse of ``to_published``."""
        return dict(tensors)

    @classmethod
    def to_published(cls, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """This alignment's ``state_dict`` as the published layout names it (keys without the prefix)."""
        return dict(state)

    def histograms(self) -> dict[str, Tensor]:
        """Detached 1-D tensors from the last ``forward`` worth a histogram (logged as ``align/<label>/<name>``
        at logging steps through ``haste_histograms``); keep a reference, not a copy. None by default."""
        return {}

    def attention_view(self) -> AttentionView | None:
        """The attention maps this loss compares, for pictures (``haste_images``: the teacher's maps next to
        the student's while aligned, the student's alone after termination). The view is kept after the
        alignment is released, so it should hold nothing large. None (no pictures) by default."""
        return None


class Termination(Component, ABC):
    """Decides when an alignment stops. No runtime arguments.

    ``update`` is called after every optimiser step with the 1-based step just completed and that step's
    detached losses as device tensors (``loss/denoise``, ``loss/total``, ``align/<label>`` and the alignments'
    extra metrics ``align/<label>/<key>``; reading one with ``.item()`` synchronises the device, so do it
    sparingly). It returns ``Fired`` once; it is not called again after. The values are this rank's own; a policy must
    reach the same decision on every rank, so base it on the step or on values averaged with
    ``haste_core.distributed.all_reduce_mean``.

    Optional parts (defaults do nothing), read by the recipe loader, ``haste_core.train.phase.PhasePlan`` and
    the trainer:

    - ``check(config, labels=...)`` (a class method) runs when the recipe is validated, with the labels the
      policy will govern: refuse what cannot work there with a ``RecipeError``.
    - ``metrics_read(config)`` (a class method) names the metrics ``update`` reads by name, as {setting: name}:
      the recipe loader refuses a name no step gives the policy (``align/typo``), listing the valid ones, and the
      contract check feeds them.
    - ``bind(labels, context)`` is called once, before training, with the labels of the alignments the policy
      governs (every alignment for a run-wide or ``watch`` policy) and a ``PolicyContext`` (the step budget,
      the steps per epoch); they are in ``self.terms`` and ``self.context``.
    - ``probe_every`` > 0 asks for the gradient probe (``haste_core.train.probe``) every that many steps while the
      policy is undecided; on those steps ``metrics`` also holds ``grad/dot/<a>/<b>``, the dot products of
      the per-term gradients on the shared student parameters, averaged over ranks (terms: ``denoise`` and the
      active labels; alignment gradients include their weights), and ``grad/denoise_sq/<a>+<b>...`` (read
      them with ``haste_core.ops.conflict_cosine``). No probe runs when no policy asks for one.
    - ``weight_scale(step)`` is a factor in [0, 1] on the recipe weight of the governed alignments for the
      1-based step about to be trained (``fade``). The trainer reads it before every step into the training
      module as a plain float (no rebuild). The scales of ``watch`` policies are ignored: they only observe.
    """

    probe_every: int = 0  # steps between gradient probes this policy needs; 0: none

    def __init__(self, config: Any) -> None:
        self.config = config
        self.terms: list[str] = []
        self.context: PolicyContext | None = None

    @classmethod
    def check(cls, config: Any, *, labels: list[str]) -> None:
        """Raise ``RecipeError`` (path relative to this node) if ``config`` cannot work for these labels."""

    @classmethod
    def metrics_read(cls, config: Any) -> dict[str, str]:
        """{setting: metric name} for each metric of ``update`` that ``config`` reads by name; none by default."""
        return {}

    def bind(self, labels: list[str], context: PolicyContext) -> None:
        """Learn which alignment labels this policy governs (or watches), and the run's schedule."""
        self.terms, self.context = list(labels), context

    def weight_scale(self, step: int) -> float:
        """The factor on the governed alignments' weights for ``step``; 1.0 unless the policy fades them."""
        return 1.0

    @abstractmethod
    def update(self, step: int, metrics: dict[str, Tensor]) -> Fired | None:
        """``Fired(reason)`` when alignment must stop after this step, else None."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the same decision after a restart (plain Python values)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


class Objective(Component, ABC):
    """Turns clean data into a training pair and defines the denoising loss. No runtime arguments.

    The built-in samplers (``euler``, ``heun``, ``sde``) use ``velocity`` (the probability-flow velocity implied
    by a prediction), ``alpha_sigma`` and ``alpha_sigma_rates``. An objective may add samplers of its own
    (``extra_samplers``: name -> ``fn(objective, student, noise, cond, config, generator=...) -> x0``, with
    ``config`` the ``sampling`` section) and refuse sampling settings it cannot honour (``check_sampling``).
    """

    extra_samplers: ClassVar[Mapping[str, Callable[..., Tensor]]] = {}

    def __init__(self, config: Any) -> None:
        self.config = config

    @classmethod
    def check_sampling(cls, config: Any, sampling: Any) -> None:
        """Raise ``RecipeError`` (path relative to the ``sampling`` section) for settings of ``sampling`` that
        this objective's samplers cannot honour; ``config`` is the objective's own."""

    @abstractmethod
    def training_pair(self, x0: Tensor) -> TrainingPair:
        """Sample t and noise (global RNG, on x0's device) and build x_t and the target."""

    @abstractmethod
    def loss(self, pred: Tensor, pair: TrainingPair) -> Tensor:
        """The denoising loss of the student's prediction for ``pair`` as an fp32 scalar (mean over the batch).

        ``pair`` is what ``training_pair`` returned (x_t and t as well as the target, for losses that need
        them, such as DDPM's variational term)."""

    @abstractmethod
    def velocity(self, pred: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """dx/dt of the probability-flow ODE at (x_t, t) given the student's prediction."""

    @abstractmethod
    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """The interpolant's coefficients: x_t = alpha(t)·x0 + sigma(t)·noise."""

    def alpha_sigma_rates(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(dα/dt, dσ/dt) at ``t`` (the SDE sampler's score needs them); by autograd through ``alpha_sigma``
        unless an objective gives them in closed form."""
        with torch.enable_grad():
            leaf = t.detach().clone().requires_grad_(True)
            alpha, sigma = self.alpha_sigma(leaf)
            d_alpha = torch.autograd.grad(alpha.sum(), leaf, retain_graph=True)[0]
            d_sigma = torch.autograd.grad(sigma.sum(), leaf)[0]
        return d_alpha, d_sigma


FAMILIES: dict[str, type] = {
    "students": Student,
    "teachers": Teacher,
    "alignments": Alignment,
    "terminations": Termination,
    "objectives": Objective,
    "datasets": Dataset,
}
"""Registry family name -> component base class; hook ``haste_register_<family>`` fills each."""
