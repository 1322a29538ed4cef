"""A short greedy sample at the end of training, through hybridcore.generate (hybrid cache)."""

from __future__ import annotations

import torch

from ..generation.loop import generate


@torch.no_grad()
def greedy_continue(model, input_ids: torch.Tensor, max_new_tokens: int, eos_id: int | None = None) -> torch.Tensor:
    """ids [1, L] -> [1, L + n], n <= max_new_tokens; stops after EOS or at the model's max_seq_len."""
    max_new_tokens = max(0, min(max_new_tokens, model.config.max_seq_len - input_ids.shape[1]))
    out = generate(model, input_ids, max_new_tokens, temperature=0.0, eos_token_id=eos_id)
    if eos_id is not None:  # cut after the first generated EOS (generate repeats it in finished rows)
        new = out[0, input_ids.shape[1]:].tolist()
        if eos_id in new:
            out = out[:, :input_ids.shape[1] + new.index(eos_id) + 1]
    return out


def sample_text(model, tokenizer, prompt: str, max_new_tokens: int, device) -> str:
    was_training = model.training
    model.eval()
    try:
        ids = tokenizer.encode(prompt) or [tokenizer.eos_id]
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        out = greedy_continue(model, input_ids, max_new_tokens, tokenizer.eos_id)
        return prompt + tokenizer.decode(out[0, len(ids):].tolist())
    finally:
        model.train(was_training)
