"""DiT (Peebles & Xie 2023): the SiT backbone as a DDPM ε-model with learned sigma, at every published size.

Registered as ``dit_{s,b,l,xl}_{2,4,8}`` plus ``dit_{micro,tiny}_{1,2,4}`` for CPU work. The architecture is
SiT's (module names identical, so the official DiT checkpoints load key for key); it differs in two places:

* learned sigma (``learn_sigma``, on by default): the final layer predicts 2C channels, ε then the values that
  interpolate the log-variance between β_n and the posterior variance β̃_n (the ``ddpm`` objective reads both);
* the timestep embedder sees the discrete DDPM index n = t·(T−1) (``time_scale`` = 999 for T = 1000), as the
  official DiT was trained with integer timesteps 0..999; our objectives pass t in [0, 1].

Train it with ``objective: {name: ddpm}`` and sample with ``sampling.sampler: ddpm`` (ancestral) or Euler on
the probability-flow velocity the ``ddpm`` objective derives from ε.
"""

from __future__ import annotations

from dataclasses import dataclass

from haste_core import DataSpec, RecipeError, Registry, StudentSpec, hookimpl
from haste_students.sit import SiT, SiTArch, register_sizes

DDPM_STEPS = 1000  # DiT's diffusion length T: t in [0, 1] is fed to the embedder as n = t·(T − 1)


class DiT(SiT):
    """DiT with adaLN-Zero blocks, class conditioning with a null class, and (by default) learned sigma."""

    family = "dit"

    @dataclass(kw_only=True, frozen=True)
    class Config(SiT.Config):
        learn_sigma: bool = True  # 2C output channels: ε and the variance interpolation values (DiT default)
        time_scale: float = float(DDPM_STEPS - 1)  # t·time_scale is what the timestep embedder sees

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.time_scale <= 0:
                raise RecipeError(f"must be positive, got {self.time_scale}", "time_scale")

    def __init__(self, config: Config, *, arch: SiTArch, data: DataSpec, spec: StudentSpec) -> None:
        super().__init__(
            config, arch=arch, data=data, spec=spec, learn_sigma=config.learn_sigma, time_scale=config.time_scale
        )


@hookimpl
def haste_register_students(registry: Registry) -> None:
    register_sizes(registry, DiT)
