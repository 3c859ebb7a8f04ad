"""Caption embeddings for text-conditioned data: open_clip's CLIP text tower (the default for ``prepare coco``).

For each caption: the token states after the final layer norm (L×D, L = the model's context length, 77 for CLIP),
a mask that is True for real tokens (start token to end-of-text token, inclusive) and the pooled, projected
caption vector (P). This matches what U-ViT/REPA feed MMDiT (CLIP ViT-L/14 last hidden state, 77×768),
here from open_clip's OpenAI ViT-L-14 weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from haste_core.errors import HasteError

DEFAULT_TEXT_MODEL = "ViT-L-14"
DEFAULT_TEXT_WEIGHTS = "openai"


class OpenCLIPText:
    """Wraps an open_clip ``CLIP`` model and its tokenizer; ``encode(captions)`` -> (tokens, mask, pooled)."""

    def __init__(self, model: Any, tokenizer: Any, device: torch.device | str = "cpu") -> None:
        self.model = model.to(device).eval().requires_grad_(False)
        self.tokenizer, self.device = tokenizer, torch.device(device)
        self.text_len = int(model.context_length)
        self.text_dim = int(model.ln_final.normalized_shape[0])
        projection = model.text_projection
        self.pooled_dim = int(projection.shape[1] if isinstance(projection, Tensor) else projection.out_features)

    @classmethod
    def load(
        cls, name: str = DEFAULT_TEXT_MODEL, pretrained: str = DEFAULT_TEXT_WEIGHTS, device: Any = "cpu"
    ) -> OpenCLIPText:
        """open_clip model ``name`` with weights ``pretrained`` (a tag or a local file), from the cache offline."""
        import open_clip

        try:
            model = open_clip.create_model(name, pretrained=pretrained, device=device)
        except (RuntimeError, OSError, ValueError) as exc:
            raise HasteError(
                f"could not load open_clip {name} weights {pretrained!r} ({exc}). Offline, the weights must be in "
                "the Hugging Face cache or given as a local file (--text-weights /path/to/open_clip_pytorch_model.bin)"
            ) from None
        return cls(model, open_clip.get_tokenizer(name), device)

    @torch.no_grad()
    def encode(self, captions: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        tokens = self.tokenizer(captions).to(self.device)
        model = self.model
        x = model.token_embedding(tokens) + model.positional_embedding
        x = model.transformer(x, attn_mask=model.attn_mask)
        x = model.ln_final(x)
        end = tokens.argmax(dim=-1)  # the end-of-text token has the largest id in CLIP's vocabulary
        positions = torch.arange(tokens.shape[1], device=self.device)
        mask = positions.unsqueeze(0) <= end.unsqueeze(1)
        pooled = x[torch.arange(len(captions), device=self.device), end]
        projection = model.text_projection
        pooled = pooled @ projection if isinstance(projection, Tensor) else projection(pooled)
        return x.float(), mask, pooled.float()
