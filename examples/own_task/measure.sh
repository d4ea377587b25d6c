#!/usr/bin/env bash
# Time examples/own_task's commands as a newcomer runs them (after the quickstart: model cached).
# Usage: examples/own_task/measure.sh REPO_DIR [QUICKSTART_RUN_DIR]  (writes REPO_DIR/runs_timing; output: measured.txt)
set -u
cd "$1"; . .venv/bin/activate
out=runs_timing; rm -rf $out; mkdir -p $out
echo "start $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg) nproc $(nproc)"
t() { local s=$(date +%s.%N); "$@" > $out/last.log 2>&1; local rc=$?; local e=$(date +%s.%N);
      printf 'rc=%s wall=%.1fs load=%s :: %s\n' $rc $(echo "$e - $s" | bc) "$(cut -d' ' -f1-3 /proc/loadavg)" "$*"; tail -4 $out/last.log; }
M=$(python -c "from mptune import assets; print(assets.smollm2_model_dir())")
echo "model $M"
s0=$(date +%s)
t mptune tasks check=examples/own_task/urgency.yaml
t mptune prompt-tune model.name=$M task=examples/own_task/urgency.yaml output_dir=$out/urgency \
  prompt.length=8 train.max_steps=30 train.batch_size=8 train.lr=0.03 train.warmup_steps=2 train.eval_every=10
t mptune evaluate prompt=$out/urgency split=test
t mptune predict prompt=$out/urgency input=examples/own_task/new_tickets.jsonl output=$out/urgency/new.jsonl
echo "total (check..predict) $(( $(date +%s) - s0 )) s"
cat $out/urgency/new.jsonl | cut -c1-300
python - <<'PY'
import json; m=json.load(open("runs_timing/urgency/metrics.json")); print(json.dumps(m)[:1500])
PY
if [ -n "${2:-}" ]; then
  t mptune adapt source=$2/source/mpt tasks=[examples/own_task/urgency.yaml] output_dir=$out/urgency-mpt \
    train.max_steps=30 train.batch_size=8 train.lr=0.03
  python -c "import json; print(json.dumps(json.load(open('$out/urgency-mpt/metrics.json')))[:1500])"
fi
echo "end $(date +%T)"
