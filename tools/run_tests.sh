#!/usr/bin/env bash
# Set up the test environments and run the test suite in each.
#   tools/run_tests.sh            all stacks: current releases, the WebUI's pins, Forge Neo's pins
#   tools/run_tests.sh current    one stack
# The forge stack (gradio 4.40 & co.) runs the page and Forge tests only, unless given pytest arguments.
# Extra arguments after the stack go to pytest.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
stacks=${1:-all}; shift || true
[ "$stacks" = all ] && stacks="current webui forge"
forge_tests="tests/test_ui_browser.py tests/test_ui_build.py tests/test_ui_handlers.py tests/test_forge_neo.py"
for stack in $stacks; do
  venv="$root/.venv-test-$stack"
  echo "=== $stack stack: setting up $venv"
  tools/setup_env.sh "$venv" "$stack" test
  echo "=== $stack stack: running tests"
  if [ "$stack" = forge ] && [ $# -eq 0 ]; then
    "$venv/bin/python" -m pytest -q $forge_tests
  else
    "$venv/bin/python" -m pytest -q "$@"
  fi
done
