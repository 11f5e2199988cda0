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
    elsewhere. Masks are drawn afresh on every call, so each epoch sees new ones.
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
        batch = {key: torch.stack([torch.as_tensor(s[key]) for s in samples]) for key in samples[0]}
        batch["input_ids"], batch["labels"] = self.mask(batch["input_ids"], batch["attention_mask"])
        return batch

    def mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids = input_ids.clone()
        candidates = attention_mask.bool() & ~torch.isin(input_ids, self.special_token_ids)
        selected = candidates & (torch.rand(input_ids.shape) < self.mlm_probability)
        labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))

        draw = torch.rand(input_ids.shape)
        to_mask = selected & (draw < 0.8)
        to_random = selected & (draw >= 0.8) & (draw < 0.9)
        input_ids[to_mask] = self.mask_token_id
        picks = torch.randint(len(self.replacement_ids), (int(to_random.sum()),))
        input_ids[to_random] = self.replacement_ids[picks]
        return input_ids, labels
