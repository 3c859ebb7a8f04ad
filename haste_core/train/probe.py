"""The gradient probe: how the denoising and alignment gradients relate on the student parameters they share.

Every ``probe_every`` steps (only when a termination policy asks for it), the trainer runs the training module
once more on the step's batch, unwrapped from DDP (no all-reduce inside), and takes with ``autograd.grad`` the
gradient of each term (the denoising loss, and each active alignment times its weight) on the student
parameters that the denoising loss and at least one alignment reach. The Gram matrix of these gradients is
averaged over ranks, so every rank decides alike, and published as ``grad/dot/<a>/<b>`` (a ≤ b in term order),
together with ``grad/denoise_sq/<a>+<b>...``: the squared norm of the denoising gradient on the parameters
reached by exactly that set of alignments. A cosine between denoising and some alignments then uses only the
parameters those alignments share with denoising: the norm of the denoising gradient elsewhere does not dilute it.
The probe draws its randomness (label dropout, query subsets) from a forked RNG, so training is unchanged by it.

From the Gram matrix: ``grad/cos/<label>`` (cosine between the denoising gradient and that term's: below 0,
the alignment pulls against denoising — HASTE's "straitjacket"), and ``grad/share/<term>`` (each term's
gradient norm over the sum of the norms, so the shares add up to 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from haste_core import distributed
from haste_core.ops import DENOISE, REACH_PREFIX, conflict_cosine, dot_key, probe_dot, probe_terms


def _reach_sets(labels: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty set of alignment labels, in a fixed order (the same on every rank)."""
    return [tuple(label for bit, label in enumerate(labels) if mask >> bit & 1) for mask in range(1, 2 ** len(labels))]


def measure(
    step_module: nn.Module, args: Sequence[Any], weights: dict[str, float], device: torch.device
) -> dict[str, Tensor]:
    """Run ``step_module(*args)`` (a ``TrainStep``, unwrapped) and return ``grad/dot/<a>/<b>`` over ranks.

    ``weights`` maps each active alignment label to the weight it has in this step's loss.
    """
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        _, parts = step_module(*args)
    terms = {DENOISE: parts["loss/denoise"]}
    terms.update({label: weight * parts[f"align/{label}"] for label, weight in weights.items()})
    params = [p for p in step_module.student.parameters() if p.requires_grad]
    names = list(terms)
    grads = {
        name: torch.autograd.grad(loss, params, retain_graph=index < len(names) - 1, allow_unused=True)
        for index, (name, loss) in enumerate(terms.items())
    }
    reach_sets = _reach_sets(names[1:])
    gram = torch.zeros(len(names), len(names), dtype=torch.float64, device=device)
    denoise_sq = torch.zeros(len(reach_sets), dtype=torch.float64, device=device)
    for index, param in enumerate(params):
        reached = [grads[name][index] is not None for name in names]
        if not reached[0] or not any(reached[1:]):
            continue  # not shared: only one kind of term reaches this parameter
        zero = param.new_zeros(param.numel(), dtype=torch.float64)
        flat = torch.stack([zero if (g := grads[name][index]) is None else g.double().flatten() for name in names])
        gram += flat @ flat.T
        reach = tuple(name for name, hit in zip(names[1:], reached[1:], strict=True) if hit)
        denoise_sq[reach_sets.index(reach)] += flat[0] @ flat[0]
    size = len(names) ** 2
    reduced = distributed.all_reduce_mean(torch.cat([gram.flatten(), denoise_sq]))  # one collective
    gram = reduced[:size].view(len(names), len(names))
    out = {dot_key(a, b): gram[i, j] for i, a in enumerate(names) for j, b in enumerate(names) if j >= i}
    out.update({REACH_PREFIX + "+".join(reach): reduced[size + i] for i, reach in enumerate(reach_sets)})
    return out


def health(metrics: dict[str, Any]) -> dict[str, float]:
    """``grad/cos/<label>`` and ``grad/share/<term>`` from a probe result (plain floats, for logging)."""
    order = probe_terms(metrics)
    norms = {term: math.sqrt(max(probe_dot(metrics, term, term, order), 0.0)) for term in order}
    total = sum(norms.values())
    out = {f"grad/share/{term}": (norm / total if total > 0 else 0.0) for term, norm in norms.items()}
    for label in order[1:]:
        cosine = conflict_cosine(metrics, [label])
        out[f"grad/cos/{label}"] = 0.0 if cosine is None else cosine
    return out
