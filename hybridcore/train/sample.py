"""A short greedy sample at the end of training: hybridcore.generate when it exists, else a plain loop."""

from __future__ import annotations

import torch


@torch.no_grad()
def greedy_continue(model, input_ids: torch.Tensor, max_new_tokens: int, eos_id: int | None = None) -> torch.Tensor:
    """ids [1, L] -> [1, L + n], n <= max_new_tokens; stops after EOS or at the model's max_seq_len."""
    max_new_tokens = max(0, min(max_new_tokens, model.config.max_seq_len - input_ids.shape[1]))
    try:
        from ..generate import generate
    except ImportError:
        generate = None
    if generate is not None:
        out = generate(model, input_ids, max_new_tokens, temperature=0.0, eos_token_id=eos_id)
    else:
        out = input_ids
        for _ in range(max_new_tokens):  # no cache: recomputes the prefix each time, fine for a short sample
            logits = model(out)
            logits = logits.logits if hasattr(logits, "logits") else logits
            token = logits[:, -1].argmax(dim=-1, keepdim=True)
            out = torch.cat([out, token], dim=1)
            if eos_id is not None and int(token) == eos_id:
                break
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
