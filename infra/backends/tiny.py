"""``tiny`` backend: the project's own small transformer, on CPU.

``checkpoint`` is ``policy``, ``small`` or the path of a Hugging Face directory written by
``infra.tiny.hf.save_pretrained`` (``infra/models/tiny-policy/``, ``.../tiny-small/``); rows
name the model ``tiny:<directory name>``.

Rendering: ``prompt + prefix`` (a base model, no chat template). Sample ``j`` of a request
uses ``sample_seed(seed, j)``, and the model's sampler makes a row depend only on its own
prompt and seed, so outputs are reproducible whatever the batching (``reproducible=True``).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from infra.backends.base import BackendUnavailable, Completion, GenRequest, GenResult, sample_seed
from infra.config import TinyBackend

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
NAMED = {"policy": MODELS_DIR / "tiny-policy", "small": MODELS_DIR / "tiny-small"}


class TinyGenerator:
    reproducible = True

    def __init__(self, cfg: TinyBackend):
        import torch

        from infra.tiny.hf import is_pretrained_dir, load_pretrained

        from infra.fs import as_path, localize

        path = NAMED.get(cfg.checkpoint) or Path(localize(cfg.checkpoint))  # a checkpoint on an object store: a verified local copy
        if path.suffix == ".pt" and path.is_file():
            raise BackendUnavailable(f"{path} is the former .pt format: convert it with `python -m infra.tiny.hf {path} OUT_DIR`")
        if not is_pretrained_dir(path):
            raise BackendUnavailable(f"tiny checkpoint not found: {path} (train one with `python -m infra.tiny.train`)")
        torch.set_num_threads(cfg.threads)
        try:
            self.model, self.tok, self.meta = load_pretrained(path)
        except ValueError as e:
            raise BackendUnavailable(f"{path} is not a tiny-compatible checkpoint: {e}") from e
        self.batch_size = cfg.batch_size
        self.model_name = f"tiny:{as_path(cfg.checkpoint).name if cfg.checkpoint not in NAMED else path.name}"

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        from infra.tiny.model import sample

        for r in requests:
            r.validate()
        # Expand samples, then batch rows that share sampling parameters.
        groups: dict[tuple, list[tuple[int, int]]] = defaultdict(list)
        for i, r in enumerate(requests):
            for j in range(r.n):
                groups[(r.temperature, r.top_p, r.max_tokens, r.stop)].append((i, j))
        done: dict[tuple[int, int], Completion] = {}
        prompt_tokens = [0] * len(requests)
        for (temp, top_p, max_tokens, stop), rows in groups.items():
            for k in range(0, len(rows), self.batch_size):
                chunk = rows[k : k + self.batch_size]
                outs = sample(
                    self.model,
                    self.tok,
                    [requests[i].prompt + requests[i].prefix for i, _ in chunk],
                    [sample_seed(requests[i].seed, j) for i, j in chunk],
                    temperature=temp,
                    top_p=top_p,
                    max_tokens=max_tokens,
                    stop=list(stop),
                )
                for (i, j), o in zip(chunk, outs):
                    prompt_tokens[i] = o.prompt_tokens
                    done[(i, j)] = Completion(o.text, o.finish_reason, len(o.token_ids), sum(o.logprobs))
        return [
            GenResult([done[(i, j)] for j in range(r.n)], prompt_tokens[i], {"model": self.model_name})
            for i, r in enumerate(requests)
        ]

    def close(self) -> None:
        self.model = None
