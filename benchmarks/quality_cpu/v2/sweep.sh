#!/usr/bin/env bash
# Item 6 of issue #18, "strong baselines first": each method's prompt length and learning rates chosen
# on dev (full data, seed 1), before the matrix runs. Usage (from the repository root):
#   bash benchmarks/quality_cpu/v2/sweep.sh pt  [targets]   # PT: (l, lr) in (20, 0.03), (20, 0.3), (100, 0.03)
#   bash benchmarks/quality_cpu/v2/sweep.sh mpt [targets] [key=value ...]  # MPT: u,v lr in {0.03, 0.3},
#                                                             P* at 0.1x; after the source stage
# One worker and one torch thread per launch; results under v2/sweep/<setting>/.
set -euo pipefail
what=${1:?pt or mpt}; targets=${2:-[vader_movie,vader_nyt,cola]}
cfg=benchmarks/quality_cpu/v2/pipeline.yaml; root=runs/quality_v2
one() {  # name, then overrides
  local name=$1; shift
  nice -n 10 python benchmarks/quality_cpu/run.py --config $cfg --workers 1 --threads 1 --controls cola \
    --out $root/sweep/$name --results benchmarks/quality_cpu/v2/sweep/$name \
    --set 'seeds=[1]' 'few_shot_k=[]' "targets=$targets" "$@" > $root/sweep/$name.log 2>&1
}
mkdir -p $root/sweep
if [ "$what" = pt ]; then  # three settings at once (run beside the source side, at a lower priority)
  for s in "20 0.03" "20 0.3" "100 0.03"; do
    set -- $s
    one pt_l$1_lr$2 'methods=[pt]' prompt.length=$1 target_train.lr=$2 &
  done
  wait
else  # MPT reuses the main run's teachers and source stage (linked into each sweep folder); P* at 0.1x
  for t in 0.03 0.3; do
    s=$(python -c "print(round($t / 10, 6))")
    name=mpt_shared${s}_task${t}
    mkdir -p $root/sweep/$name; for d in teachers source; do ln -sfn ../../$d $root/sweep/$name/$d; done
    one $name 'methods=[mpt]' adapt.lr_shared=$s target_train.lr=$t "${@:3}" &
  done
  wait
fi
