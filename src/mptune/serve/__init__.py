"""`mptune serve`: many task prompts on one frozen backbone behind an HTTP JSON API.

store.py    which prompts are served (stage, run and PEFT folders; add/remove; a shared prompts_dir)
engine.py   a mixed-task batch -> labels with scores / generated text, as `mptune predict` computes them
prefix.py   the one adapter onto the backbone's shared-prefix fast path (prompt keys/values once per task)
batcher.py  dynamic batching on one model thread: bounded wait, bounded queue, drains on shutdown
app.py      the FastAPI app (routes, JSON errors naming the field) and the per-process Server
"""
