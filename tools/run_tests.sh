#!/usr/bin/env bash
# Set up the test environments and run the test suite in each.
#   tools/run_tests.sh            both stacks: current releases and the WebUI's pins
#   tools/run_tests.sh current    one stack
# Extra arguments after the stack go to pytest.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
stacks=${1:-all}; shift || true
[ "$stacks" = all ] && stacks="current webui"
for stack in $stacks; do
  venv="$root/.venv-test-$stack"
  echo "=== $stack stack: setting up $venv"
  tools/setup_env.sh "$venv" "$stack" test
  echo "=== $stack stack: running tests"
  "$venv/bin/python" -m pytest -q "$@"
done
