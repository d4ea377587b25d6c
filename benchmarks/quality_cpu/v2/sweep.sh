#!/usr/bin/env bash
# Item 6 of issue #18, "strong baselines first": each method's prompt length and learning rates chosen
# on dev (full data, seed 1), before the matrix runs. Usage (from the repository root):
#   bash benchmarks/quality_cpu/v2/sweep.sh pt  [targets]   # PT: l in {20, 100} x lr in {0.03, 0.3}
#   bash benchmarks/quality_cpu/v2/sweep.sh mpt [targets]   # MPT: P* lr x u,v lr, after the source stage
# Two launches at a time, one worker and one torch thread each; results under v2/sweep/<setting>/.
set -euo pipefail
what=${1:?pt or mpt}; targets=${2:-[vader_movie,vader_nyt,cola]}
cfg=benchmarks/quality_cpu/v2/pipeline.yaml; root=runs/quality_v2
one() {  # name, then overrides
  local name=$1; shift
  nice -n 5 python benchmarks/quality_cpu/run.py --config $cfg --workers 1 --threads 1 --controls cola \
    --out $root/sweep/$name --results benchmarks/quality_cpu/v2/sweep/$name \
    --set 'seeds=[1]' 'few_shot_k=[]' "targets=$targets" "$@" > $root/sweep/$name.log 2>&1
}
mkdir -p $root/sweep
if [ "$what" = pt ]; then
  for l in 20 100; do
    one pt_l${l}_lr0.03 'methods=[pt]' prompt.length=$l target_train.lr=0.03 &
    one pt_l${l}_lr0.3 'methods=[pt]' prompt.length=$l target_train.lr=0.3
    wait
  done
else  # MPT reuses the main run's teachers and source stage (linked into each sweep folder)
  for s in 0.003 0.03; do
    for t in 0.03 0.3; do
      name=mpt_shared${s}_task${t}
      mkdir -p $root/sweep/$name; for d in teachers source; do ln -sfn ../../$d $root/sweep/$name/$d; done
      one $name 'methods=[mpt]' adapt.lr_shared=$s adapt.lr_task=$t &
    done
    wait
  done
fi
