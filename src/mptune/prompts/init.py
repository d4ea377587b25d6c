"""Starting vectors for a soft prompt (vocab / text / random / average of saved prompts).

Sits above io.py and soft.py: the ``prompts`` init reads saved prompt files.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..config import PromptConfig, PromptInit
from .io import load_prompt


def init_prompt_vectors(cfg: PromptConfig, embeddings: nn.Embedding, tokenizer=None,
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Starting vectors [l, d] in the space the model's ``inputs_embeds`` live in."""
    table = embeddings.weight.detach().float().cpu()
    l, (vocab, d) = cfg.length, table.shape
    if cfg.init == PromptInit.vocab:
        # l distinct ids among the first n ids (ATTEMPT: np.random.permutation(range(5000))[:l],
        # modeling_t5.py:1759-1764); l > n repeats whole permutations, so no id comes up twice more than another.
        n = min(cfg.init_vocab_size, vocab)
        ids = torch.cat([torch.randperm(n, generator=generator) for _ in range(-(-l // n))])[:l]
    elif cfg.init == PromptInit.text:
        if tokenizer is None:
            raise ValueError("prompt.init=text needs the backbone's tokenizer")
        ids = torch.tensor(tokenizer(cfg.init_text, add_special_tokens=False)["input_ids"], dtype=torch.long)
        if ids.numel() == 0:
            raise ValueError(f"prompt.init_text {cfg.init_text!r} tokenises to nothing")
        ids = ids.repeat((l + ids.numel() - 1) // ids.numel())[:l]
    elif cfg.init == PromptInit.prompts:
        prompts = [load_prompt(p, dim=d, kind="soft")[0]["prompt"] for p in cfg.init_from]
        if any(p.shape[0] != l for p in prompts):
            raise ValueError(f"prompt.init_from: prompts have lengths {[p.shape[0] for p in prompts]}, "
                             f"prompt.length is {l}")
        return torch.stack(prompts).mean(0)
    elif cfg.init == PromptInit.best_prompt:
        raise ValueError("prompt.init=best_prompt is resolved by the prompt-tune recipe (it scores init_from on dev)")
    else:
        return torch.randn(l, d, generator=generator) * table.std()
    # Go through the module so embedding-side scaling (Gemma 3) is applied as for real text.
    with torch.no_grad():
        return embeddings(ids.to(embeddings.weight.device)).float().cpu()
