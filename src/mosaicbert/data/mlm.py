"""Dynamic masked-language-model masking (BERT's 80/10/10 rule)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

IGNORE_INDEX = -100


class MLMCollator:
    """Stack tokenized samples and mask a fraction of their real tokens.

    Each non-special, non-padding token is selected with probability `mlm_probability`.
    Of the selected tokens 80% become [MASK], 10% a random ordinary token and 10% stay
    as they are; `labels` holds the original id at selected positions and -100
    elsewhere.

    A sample may carry a `mask_seed`; its mask is then drawn from a generator seeded with
    it, so masks do not depend on worker processes, world size or where a resumed run
    picked up. Without seeds the global torch RNG is used.
    """

    def __init__(
        self,
        mlm_probability: float,
        mask_token_id: int,
        special_token_ids: Sequence[int],
        vocab_size: int,
    ):
        if not 0.0 < mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must lie in (0, 1), got {mlm_probability}")
        self.mlm_probability = mlm_probability
        self.mask_token_id = mask_token_id
        self.special_token_ids = torch.tensor(sorted(set(special_token_ids)), dtype=torch.long)
        is_special = torch.zeros(vocab_size, dtype=torch.bool)
        is_special[self.special_token_ids] = True
        # Random replacements are drawn from ordinary tokens only, never [PAD], [CLS], [MASK], ...
        self.replacement_ids = torch.nonzero(~is_special).squeeze(1)

    @classmethod
    def for_tokenizer(cls, tokenizer, mlm_probability: float) -> MLMCollator:
        return cls(mlm_probability, tokenizer.mask_token_id, tokenizer.all_special_ids, len(tokenizer))

    def __call__(self, samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        keys = [key for key in samples[0] if key != "mask_seed"]
        batch = {key: torch.stack([torch.as_tensor(s[key]) for s in samples]) for key in keys}
        generators = None
        if "mask_seed" in samples[0]:
            generators = [torch.Generator().manual_seed(int(s["mask_seed"])) for s in samples]
        batch["input_ids"], batch["labels"] = self.mask(batch["input_ids"], batch["attention_mask"], generators)
        return batch

    def mask(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        generators: Sequence[torch.Generator] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        candidates = attention_mask.bool() & ~torch.isin(input_ids, self.special_token_ids)
        selected = candidates & (_uniform(input_ids.shape, generators) < self.mlm_probability)
        labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))

        draw = _uniform(input_ids.shape, generators)
        to_mask = selected & (draw < 0.8)
        to_random = selected & (draw >= 0.8) & (draw < 0.9)
        n = len(self.replacement_ids)
        random_ids = self.replacement_ids[(_uniform(input_ids.shape, generators) * n).long().clamp_(max=n - 1)]
        masked = torch.where(to_mask, self.mask_token_id, input_ids)
        masked = torch.where(to_random, random_ids, masked)
        return masked, labels


def _uniform(shape: torch.Size, generators: Sequence[torch.Generator] | None) -> torch.Tensor:
    """U[0, 1) of `shape`, row i drawn from generators[i] when given."""
    if generators is None:
        return torch.rand(shape)
    return torch.stack([torch.rand(shape[1:], generator=g) for g in generators])
