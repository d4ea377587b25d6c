"""Shared pieces of the CPU benchmarks: random-weight backbones of published shapes,
interleaved timing with medians, resident-set peak memory, result files.

Timing: every method of a comparison runs once per *round*, rounds repeat, and the
order rotates each round, so machine load (other jobs on these shared cores) hits
all methods alike. A ratio is reported as the median over rounds of the per-round
ratio (both numbers from the same round), next to the median times; `ratio_of_medians`
(the two medians may come from different rounds) where a script shows both.

CPU time (user + system of the whole process, all threads) is reported next to wall
time: with OpenMP's passive wait policy it counts the work done and hardly moves when
other jobs share the cores, so its ratios are the steadier ones here.

Memory (CPU; tracemalloc does not see torch's allocations): the peak resident set
during a step above the resident set just before it, ``VmHWM - VmRSS``, with the
high-water mark reset through ``/proc/self/clear_refs`` and glibc's free lists
returned to the OS (``malloc_trim(0)``) before the step, so memory freed by an
earlier step or method does not hide this step's growth. Measured on every timed
call, reported as the median. It is the step's activation/working memory (the
model weights are resident before the step and not counted).
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

RESULTS = Path(__file__).resolve().parent / "results"


_LOAD_AT_START: list[float] = []  # set by mark_start(), before any model is built or timed


def mark_start() -> None:
    """Record the load average now as the run's start (setup() does, before any model is built)."""
    _LOAD_AT_START[:] = os.getloadavg()


def setup(threads: int = 2) -> None:
    """Call before importing torch. OpenMP threads wait passively: on shared, oversubscribed cores a
    spinning thread that lost its core stalls the other one and inflates both wall and CPU time.
    Records the load average (mark_start), so `environment()` reports the start's wherever it is called."""
    if "torch" in sys.modules:
        raise RuntimeError("benchmarks: call common.setup() before importing torch")
    mark_start()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(threads)
    import warnings

    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("transformers").setLevel(logging.ERROR)


# -- models -------------------------------------------------------------------

class StubTokenizer:
    """The bits of a tokenizer the backbone uses (ids are random in these benchmarks)."""

    pad_token_id, eos_token_id, bos_token_id = 0, 1, 2
    pad_token, eos_token = "<pad>", "</s>"

    def batch_decode(self, seqs, skip_special_tokens=True):
        return [" ".join(str(int(t)) for t in s if int(t) > 2) for s in seqs]


SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                    tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=100000.0)
T5_SMALL = dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=6,
                num_heads=8, relative_attention_num_buckets=32, dropout_rate=0.0, feed_forward_proj="relu",
                tie_word_embeddings=True)


def llama(layers: Optional[int] = None, attn: str = "sdpa", dtype=None, **over):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(SMOLLM2_135M, **over)
    if layers is not None:
        cfg["num_hidden_layers"] = layers
    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(pad_token_id=0, eos_token_id=1, bos_token_id=2, attn_implementation=attn, **cfg))
    return m.to(dtype).eval() if dtype is not None else m.eval()


def t5(attn: Optional[str] = None, dtype=None, **over):
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    kw = dict(attn_implementation=attn) if attn else {}
    m = T5ForConditionalGeneration(T5Config(pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                                            **dict(T5_SMALL, **over), **kw))
    return m.to(dtype).eval() if dtype is not None else m.eval()


def backbone(model, fast: bool = True, gc: bool = False):
    from mptune.backbone import Backbone

    return Backbone(model, StubTokenizer(), name=model.config.model_type, gradient_checkpointing=gc, fast_prefix=fast)


def causal_batch(B: int, S: int, T: int, tasks: int, vocab: int, seed: int = 0, device="cpu") -> dict:
    """B rows of S tokens (no padding: every method sees the same work), last T tokens are targets,
    rows spread round-robin over `tasks` task ids."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (B, S), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones(B, S, dtype=torch.long, device=device),
            "labels": ids[:, -T:].clone().to(device), "task_index": (torch.arange(B) % tasks).to(device)}


def seq2seq_batch(B: int, S: int, T: int, tasks: int, vocab: int, seed: int = 0, device="cpu") -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(3, vocab, (B, S), generator=g).to(device),
            "attention_mask": torch.ones(B, S, dtype=torch.long, device=device),
            "labels": torch.randint(3, vocab, (B, T), generator=g).to(device),
            "task_index": (torch.arange(B) % tasks).to(device)}


# -- measurement ----------------------------------------------------------------

def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Measured:
    """Wall time, process CPU time (s) and peak resident-set growth (bytes) of one call."""

    def __init__(self, fn: Callable[[], None]):
        gc.collect()
        _malloc_trim()
        base = _status_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        self.seconds = time.perf_counter() - t0
        self.cpu_seconds = time.process_time() - c0  # all threads; less sensitive to other jobs than wall time
        self.peak_bytes = max(0, _status_kb("VmHWM") - base) * 1024


def interleaved(fns: dict[str, Callable[[], None]], repeats: int, warmup: int = 1,
                log: Optional[Callable[[str], None]] = lambda m: print(m, flush=True)) -> "Runs":
    """Wall seconds, CPU seconds and peak bytes per call for each fn: `repeats` rounds, each running
    every fn once, the order rotated from round to round."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    runs = Runs({n: [] for n in names}, {n: [] for n in names}, {n: [] for n in names})
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            m = Measured(fns[n])
            runs.wall[n].append(m.seconds)
            runs.cpu[n].append(m.cpu_seconds)
            runs.mem[n].append(m.peak_bytes)
        if log:
            log(f"  round {r + 1}/{repeats}: " + ", ".join(f"{n} {runs.wall[n][-1]:.2f}s" for n in names))
    return runs


@dataclass
class Runs:
    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]
    mem: dict[str, list[int]]

    def summary(self, name: str) -> dict:
        return {"median_s": med(self.wall[name]), "median_cpu_s": med(self.cpu[name]),
                "peak_rss_mib": mib(med(self.mem[name])), "wall_s": self.wall[name], "cpu_s": self.cpu[name],
                "peak_rss_bytes": self.mem[name]}

    @classmethod
    def from_summaries(cls, methods: dict[str, dict]) -> "Runs":
        """The runs back from a results JSON's {name: summary(name)} (it keeps every round)."""
        return cls(*({n: m[k] for n, m in methods.items()} for k in ("wall_s", "cpu_s", "peak_rss_bytes")))

    def per_round(self, num: str, den: str, cpu: bool = False) -> list[float]:
        """num/den in each round (wall time, or CPU time)."""
        t = self.cpu if cpu else self.wall
        return [a / b for a, b in zip(t[num], t[den])]

    def ratio(self, num: str, den: str, cpu: bool = False) -> float:
        """Median over rounds of num/den (wall time, or CPU time)."""
        return med(self.per_round(num, den, cpu))

    def ratio_of_medians(self, num: str, den: str, cpu: bool = False) -> float:
        """median(num) / median(den): the two medians may come from different rounds."""
        t = self.cpu if cpu else self.wall
        return med(t[num]) / med(t[den])


def med(xs) -> float:
    return float(statistics.median(xs))


# -- results ----------------------------------------------------------------------

def environment(threads: int) -> dict:
    """mptune's record of the versions and device (`mptune.utils.environment`) + what a timing depends on."""
    from mptune.utils import cpu_name, environment as versions

    if not _LOAD_AT_START:
        raise RuntimeError("benchmarks: call common.setup() first (it records the load average at the start)")
    try:
        import peft

        peft_v = peft.__version__
    except ImportError:
        peft_v = None
    return {"cpu": cpu_name(), "cores_visible": os.cpu_count(), "torch_threads": threads, **versions(), "peft": peft_v,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "load_average_at_start": list(_LOAD_AT_START),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S")}


def write_results(name: str, data: dict, markdown: str) -> None:
    """results/<name>.json and .md; the load average now is added as the end one unless `data` (read
    back from an earlier run's JSON to summarise it again) has its own."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {**data, "load_average_at_end": data.get("load_average_at_end", list(os.getloadavg()))}
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown.rstrip() + "\n")
    print(f"wrote {RESULTS / name}.json and .md")


def md_table(header: list[str], rows: list[list]) -> str:
    def fmt(x):
        if isinstance(x, float):
            return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"
        return str(x)

    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(fmt(x) for x in r) + " |" for r in rows]
    return "\n".join(out)


def mib(b: float) -> float:
    return b / 2**20


@dataclass
class Plot:
    """Write a small matplotlib figure to results/<name>.png."""

    name: str

    def __enter__(self):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.plt = plt
        return plt

    def __exit__(self, *exc):
        if exc[0] is None:
            RESULTS.mkdir(parents=True, exist_ok=True)
            self.plt.tight_layout()
            self.plt.savefig(RESULTS / f"{self.name}.png", dpi=110)
        self.plt.close("all")


def standard_args(doc: str, repeats: int = 3, render: bool = False):
    """Parse the --repeats / --quick (and, if `render`, --render) options of a model benchmark; adds
    .layers (30, or 2 with --quick) and sets .repeats to 1 with --quick (a smoke run)."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--quick", action="store_true")
    if render:
        ap.add_argument("--render", action="store_true",
                        help="no timing: summarise the rounds kept in the committed results JSON again")
    a = ap.parse_args()
    a.layers, a.repeats = (2, 1) if a.quick else (30, a.repeats)
    return a
