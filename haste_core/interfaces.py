"""The component interfaces every plugin implements, and the small records passed between them.

Shapes: B batch, N tokens, D width, H heads, C channels. Block indices are 0-based ("the output of block 7" is
the output of the 8th block). Every component class nests a ``@dataclass(kw_only=True, frozen=True) class
Config`` holding its recipe settings and is constructed as ``cls(config, **fixed, **runtime)``, where
``fixed`` come from its registration and ``runtime`` are the keyword arguments listed on each class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
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
    """The dimensions of a teacher as it will run for this student (``grid`` after its resize)."""

    name: str
    depth: int
    embed_dim: int
    num_heads: int
    grid: int  # patch tokens per side


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
    """``pred``: same shape as x_t; ``hidden``: {block: B×N×D}; ``attn_logits``: {block: B×H×N×N}."""

    pred: Tensor
    hidden: dict[int, Tensor] = field(default_factory=dict)
    attn_logits: dict[int, Tensor] = field(default_factory=dict)


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


@dataclass
class RunContext:
    """What lifecycle hooks see of a run. One object per process, updated as the run goes on."""

    recipe: Any  # haste_core.recipe.Recipe
    run_dir: Path
    rank: int
    world_size: int
    device: torch.device
    plugins: list[dict[str, Any]]
    student: nn.Module | None = None  # the live student (not DDP-wrapped); read it, do not replace it
    step: int = 0
    active_alignments: list[str] = field(default_factory=list)
    error: BaseException | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# --- components -----------------------------------------------------------------------------------------------


class Component:
    """What every component class has: a nested ``Config`` and a way to make a small valid one."""

    Config: ClassVar[type]

    @classmethod
    def example_config(cls, **specs: Any) -> Any:
        """A small valid ``Config`` for contract tests (``haste_core.testing``), given the specs the component
        is built with (``student=``, ``teacher=``). Override it when ``Config`` has required fields."""
        return cls.Config()


class Dataset(Component, torch.utils.data.Dataset, ABC):
    """A map-style training set. Runtime arguments: ``split`` ("train" or "heldout").

    ``dataset[i]`` returns ``{"image": uint8 C×H×W (for teachers), "x": float C×H×W (for the student),
    "cond": ...}``; ``image`` may be left out after ``set_images_needed(False)``. ``cond`` is an int64 class id
    for class-conditional data, or for text-conditioned data a dict ``{"text": float L×D caption token
    embeddings, "text_mask": bool L (True = a real token), "pooled": float P (only when pooled_dim > 0)}``. Items must be a
    deterministic function of the index, so that a resumed run sees exactly the batches an uninterrupted one
    would.
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

    def set_images_needed(self, needed: bool) -> None:
        """Told False when no teacher needs images any more (Phase II); a data set may then stop loading them."""


class Student(Component, nn.Module, ABC):
    """A denoising transformer. Runtime arguments: ``data`` (a ``DataSpec``).

    ``forward(x_t, t, cond, capture)`` returns a ``StudentOutput``. Blocks not named in ``capture`` must use
    fused attention; a block whose attention is captured computes its logits once and uses them for its own
    output. Label dropout for classifier-free guidance happens inside, in training mode only.
    """

    depth: int
    hidden_size: int
    num_heads: int
    grid: int

    @classmethod
    @abstractmethod
    def describe(cls, config: Any, *, data: DataSpec, **fixed: Any) -> StudentSpec:
        """Dimensions for this config and data, without building anything."""

    @abstractmethod
    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor, capture: Capture | None = None) -> StudentOutput:
        """Predict the objective's target for x_t (B×C×H×W) at times t (B)."""

    @abstractmethod
    def null_cond(self, cond: Tensor) -> Tensor:
        """The unconditional counterpart of ``cond`` (the null class), for classifier-free guidance."""


class Teacher(Component, nn.Module, ABC):
    """A frozen vision encoder. Runtime arguments: ``data`` (``DataSpec``), ``student`` (``StudentSpec``),
    ``resolve_weights`` (callable ``(kind, name) -> Path | None``, the ``haste_resolve_weights`` hook).

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
    """

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


class Termination(Component, ABC):
    """Decides when an alignment stops. No runtime arguments.

    ``update`` is called after every optimiser step with the 1-based step just completed and that step's
    detached losses as device tensors (``loss/denoise``, ``align/<label>``...; reading one with ``.item()``
    synchronises the device, so do it sparingly). It returns ``Fired`` once; it is not called again after.
    The values are this rank's own; a policy must reach the same decision on every rank, so base it on the
    step or on values averaged with ``haste_core.distributed.all_reduce_mean``.
    """

    def __init__(self, config: Any) -> None:
        self.config = config

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

    Samplers use ``velocity`` (the probability-flow velocity implied by a prediction) and ``alpha_sigma``.
    """

    def __init__(self, config: Any) -> None:
        self.config = config

    @abstractmethod
    def training_pair(self, x0: Tensor) -> TrainingPair:
        """Sample t and noise (global RNG, on x0's device) and build x_t and the target."""

    @abstractmethod
    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """The denoising loss as an fp32 scalar (mean over the batch)."""

    @abstractmethod
    def velocity(self, pred: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """dx/dt of the probability-flow ODE at (x_t, t) given the student's prediction."""

    @abstractmethod
    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """The interpolant's coefficients: x_t = alpha(t)·x0 + sigma(t)·noise."""


FAMILIES: dict[str, type] = {
    "students": Student,
    "teachers": Teacher,
    "alignments": Alignment,
    "terminations": Termination,
    "objectives": Objective,
    "datasets": Dataset,
}
"""Registry family name -> component base class; hook ``haste_register_<family>`` fills each."""
