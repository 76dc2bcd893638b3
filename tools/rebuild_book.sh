#!/usr/bin/env bash
# Re-execute the book in reading order in one book directory, so that every page's stored
# outputs come from one consistent run: first the main job (`minillm pipeline` with its
# defaults: the book's model), then every chapter with MINILLM_BOOK_DIR set to that run
# directory, so the chapters find its corpus, token shards and model. Run it on a quiet
# machine (it takes about 40 minutes on two cores), then read the pages' prose against the
# new outputs before committing.
#   tools/rebuild_book.sh [BOOK_DIR] [CHAPTER ...]   (default: /tmp/minillm-book-run, all)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
book=${1:-/tmp/minillm-book-run}; shift || true
chapters=("$@")
[ ${#chapters[@]} -gt 0 ] || chapters=(index 00_core 01_corpus 02_tokenizer 03_ngram 04_model
  05_training 05_checkpoint 06_generation 07_pipeline 08_export 09_bench 10_reliability)
export MINILLM_BOOK_DIR=$book MPLBACKEND=module://matplotlib_inline.backend_inline
stamp() { echo "=== $(date -u +%H:%M:%S) $*"; }
if [ ! -f "$book/train/summary.json" ]; then
  stamp "the main job into $book"
  minillm pipeline --run-dir "$book"
fi
shards() { sha256sum "$book"/data/{train.bin,val.bin,tokenizer.model} | cut -c1-16 | tr '\n' ' '; }
before=$(shards)
# opt-in demonstrations, on for the stored outputs (each parameters cell says so)
declare -A params=(
  [01_corpus]="-p out_dir $book/page-corpus"      # the pages' own copies: the model's
  [02_tokenizer]="-p out_dir $book/page-data"     # corpus and shards stay as trained on
  [04_model]="-p show_benchmarks True"
  [05_training]="-p out_dir $book/page-run -p show_buildup True"
  [07_pipeline]="-p run_demo True"
  [10_reliability]="-p run_bad_inputs True")
cd "$root/nbs"
for nb in "${chapters[@]}"; do
  stamp "$nb"
  # shellcheck disable=SC2086
  papermill -k python3 --log-level WARNING $nb.ipynb $nb.ipynb ${params[$nb]:-}
  # the values papermill injected are the page's switches, not part of the page
  python - "$nb.ipynb" <<'PY'
import json, sys
p = sys.argv[1]; nb = json.load(open(p))
nb['cells'] = [c for c in nb['cells'] if 'injected-parameters' not in c['metadata'].get('tags', [])]
json.dump(nb, open(p, 'w'), indent=1, ensure_ascii=False); open(p, 'a').write('\n')
PY
  # nothing may change the shards the book's model was trained on
  [ "$(shards)" = "$before" ] || { echo "the shards changed under $nb: the model no longer matches"; exit 1; }
done
cd "$root" && nbdev_clean
stamp "done: read each page's prose against its outputs"
