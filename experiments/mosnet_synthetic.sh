#!/usr/bin/env bash
# MOSnet on the synthetic phantoms: joint training on a native and a contrast dataset, evaluation
# on held-out phantoms (other seeds), and the paper's Table 3 partial-label experiment.
# Usage: [EXPERIMENT=joint|partial|ablation|all] bash experiments/mosnet_synthetic.sh WORKDIR [EPOCHS] [MAX_MINUTES]
#   joint:    the full model on native + contrast, evaluated on held-out phantoms of both conditions
#   partial:  the same with kidneys and bladder unannotated in the native dataset (paper's Table 3)
#   ablation: BM, BM_CM, BM_RB and full with one budget, then the comparison table (paper's Table 4)
# WIDTH (default 8) sets the model width, STRIDE (default 2) the slice stride, TAG a suffix for the
# joint run's name (full$TAG). A run whose checkpoint exists is resumed (e.g. with more EPOCHS).
# Seeds: training native 0-9, contrast 100-109; held-out native 200-207, contrast 300-307.
set -euo pipefail
work=${1:?work folder}; epochs=${2:-30}; minutes=${3:-40}
common=(--width "${WIDTH:-8}" --image-size 128 --slice-stride "${STRIDE:-2}" --epochs "$epochs" --max-minutes "$minutes" --device auto)
mkdir -p "$work"
[ -d "$work/data/native" ]   || mousesegment synth ct --out "$work/data/native"   --count 10 --seed 0   --condition native
[ -d "$work/data/contrast" ] || mousesegment synth ct --out "$work/data/contrast" --count 10 --seed 100 --condition contrast
[ -d "$work/data/native_nokidney" ] || mousesegment synth ct --out "$work/data/native_nokidney" --count 10 --seed 0 \
    --condition native --unannotated kidneys,bladder
[ -d "$work/test/native" ]   || mousesegment synth ct --out "$work/test/native"   --count 8 --seed 200 --condition native
[ -d "$work/test/contrast" ] || mousesegment synth ct --out "$work/test/contrast" --count 8 --seed 300 --condition contrast

run() {  # name, then the datasets; VARIANT picks the ablation variant (default full)
  local name=$1; shift
  local data=(); for d in "$@"; do data+=(--data "$work/data/$d"); done
  mousesegment train mosnet "${data[@]}" --out "$work/models/$name" "${common[@]}" --variant "${VARIANT:-full}" \
    $( [ -f "$work/models/$name/checkpoint/state.json" ] && echo --resume )
  for c in native contrast; do
    mousesegment evaluate ct --model "$work/models/$name" --data "$work/test/$c" --out "$work/reports/$name/$c"
  done
}
ablation() {
  for v in ${VARIANTS:-bm bm_cm bm_rb full}; do VARIANT=$v run "ablation_$v" native contrast; done
}
ablation_table() {
  for c in native contrast; do
    mousesegment evaluate compare --reference full --out "$work/reports/ablation_$c.md" \
      $(for v in full bm bm_cm bm_rb; do echo "$v=$work/reports/ablation_$v/$c"; done)
  done
}
case "${EXPERIMENT:-all}" in
  joint)    run "full${TAG:-}" native contrast ;;
  partial)  run partial native_nokidney contrast ;;
  ablation) ablation; ablation_table ;;
  table)    ablation_table ;;
  none)     ;;
  all)      run full native contrast; run partial native_nokidney contrast; ablation; ablation_table ;;
esac
