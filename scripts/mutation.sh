#!/usr/bin/env bash
# Mutation testing of the modules that hold limits (sizes, deadlines, caps, retries, counts):
# mutmut changes one operator, constant or call at a time, runs the tests that reach the changed
# function, and counts the mutants no test notices ("survived"). A limit whose removal survives
# is a limit no test holds. Not part of CI (about 15 min per module on 2 cores, more on a loaded
# machine); run it as root after changing a limit or its tests, and update docs/reliability.md.
#
#   bash scripts/mutation.sh                      # every module below
#   bash scripts/mutation.sh cni/podlookup.py     # one or more of them
#   MUTATION_JOBS=2 bash scripts/mutation.sh ...  # mutants run in parallel (default 1)
#
# Each module runs in its own copy of the checkout (build/mutation/<module>/, working tree as
# it is, committed or not), so the checkout itself is never mutated. Results:
# build/mutation/summary.tsv (one line per module: killed, timeout, survived, no tests, total,
# score) and build/mutation/<module>/survivors.txt (each surviving mutant's diff).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
export PYTHONHASHSEED=0  # the deterministic Hypothesis profiles need it (tests/conftest.py)
PY="$REPO/.venv/bin/python"
MUTMUT_VERSION=3.8.1
"$PY" -c "import mutmut" 2>/dev/null \
    || "$PY" -m pip install -q --disable-pip-version-check "mutmut==$MUTMUT_VERSION"

# module -> the tests that exercise it (mutmut then runs, per mutant, only those of them that
# reach the mutated function)
declare -A TESTS=(
    [cni/podlookup.py]="tests/cni/test_podlookup.py tests/cni/test_kubeconfig.py tests/hardening/test_api_faults.py"
    [cni/fileread.py]="tests/cni/test_fileread.py tests/cni/test_kubeconfig.py tests/cni/test_podlookup.py tests/admin/test_cli.py tests/admin/test_cli_inputs.py"
    [installer/atomic.py]="tests/installer/test_install_atomic_faults.py tests/installer/test_install_discovery.py tests/installer/test_install_failure_order.py"
    [installer/watcher.py]="tests/installer/test_install_watcher.py"
    [node_daemon/cni_server.py]="tests/e2e/test_agent_served.py tests/node_daemon/test_servers.py tests/node_daemon/test_cni_socket_limits.py"
)
MODULES=("$@")
((${#MODULES[@]})) || MODULES=(cni/podlookup.py cni/fileread.py installer/atomic.py
                                installer/watcher.py node_daemon/cni_server.py)

OUT="$REPO/build/mutation"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.tsv"
[[ -f "$SUMMARY" ]] || printf 'module\tkilled\ttimeout\tsurvived\tno_tests\ttotal\tscore\tcommit\n' \
    > "$SUMMARY"
COMMIT="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . || echo +changes)"

toml_list() { local out="" x; for x in "$@"; do out+="\"$x\", "; done; echo "[${out%, }]"; }

for module in "${MODULES[@]}"; do
    [[ -n "${TESTS[$module]:-}" ]] || { echo "mutation: no test list for $module" >&2; exit 2; }
    work="$OUT/${module//\//_}"
    rm -rf "$work" && mkdir -p "$work"
    git ls-files -z --cached --others --exclude-standard \
        | xargs -0 cp --parents --no-dereference -t "$work" 2>/dev/null || true
    mapfile -t tops < <(git ls-files | cut -d/ -f1 | sort -u)
    read -ra tests <<<"${TESTS[$module]}"
    cat >>"$work/pyproject.toml" <<EOF

[tool.mutmut]
source_paths = ["cni/", "installer/", "node_daemon/", "admin/"]
also_copy = $(toml_list "${tops[@]}")
only_mutate = ["$module"]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-x", "-q"]
pytest_add_cli_args_test_selection = $(toml_list "${tests[@]}")
EOF
    echo "mutation: $module (tests: ${TESTS[$module]})" >&2
    start=$SECONDS
    (cd "$work" && "$REPO/.venv/bin/mutmut" run --max-children "${MUTATION_JOBS:-1}" \
        >"$work/run.log" 2>&1) || { echo "mutation: mutmut failed, see $work/run.log" >&2; exit 1; }
    (cd "$work" && "$REPO/.venv/bin/mutmut" export-cicd-stats >/dev/null)
    (cd "$work" && "$REPO/.venv/bin/mutmut" results \
        | awk '/: survived$|: no tests$/ {sub(":.*", ""); print $1}' \
        | while read -r name; do "$REPO/.venv/bin/mutmut" show "$name"; echo; done \
        >"$work/survivors.txt")
    "$PY" - "$work/mutants/mutmut-cicd-stats.json" "$module" "$COMMIT" \
        "$((SECONDS - start))" >>"$SUMMARY" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
caught = s["killed"] + s["timeout"]
score = 100 * caught / s["total"] if s["total"] else 0
print(f"{sys.argv[2]}\t{s['killed']}\t{s['timeout']}\t{s['survived']}\t{s['no_tests']}\t"
      f"{s['total']}\t{score:.1f}%\t{sys.argv[3]} ({sys.argv[4]} s)")
EOF
    tail -1 "$SUMMARY" >&2
done
column -t -s $'\t' "$SUMMARY"
