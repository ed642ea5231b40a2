#!/usr/bin/env bash
# One-command set-up on a fresh machine: creates .venv, installs the CPU build of torch
# *first* (an unpinned torch would pull several GB of CUDA wheels), then the project with its
# test/docs/browser/serving/dev extras, the site's KaTeX (npm), Debian's chromium and prometheus
# (promtool) packages (apt-get, as root, when missing), and finally builds the site.
#
#   scripts/setup.sh                 # set up, then build the site into docs/_build/html
#   scripts/setup.sh --install-only  # set up only (what CI uses before the tests)
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
PYTHON="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# pip here resolves torch==2.13.0 to the local CPU wheel. Elsewhere, install a CPU torch into
# .venv yourself before running this script (e.g. from PyTorch's CPU wheel index); any
# torch>=2.4 already present is kept.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install --quiet "torch==${TORCH_VERSION}"
fi
.venv/bin/python -m pip install --quiet -e ".[dev]"
.venv/bin/python -c "import torch, nemo_rl_theory; print(f'nemo_rl_theory {nemo_rl_theory.__version__} with torch {torch.__version__}')"

# KaTeX renders every formula while the site builds (exact version from package-lock.json).
if ! command -v npm >/dev/null 2>&1; then
    echo "error: npm (Node.js >= 18) is needed to install KaTeX for the docs build" >&2
    exit 1
fi
npm ci --no-audit --no-fund --loglevel=error

# The browser tests (nox -s browser) drive Debian's Chromium through Playwright, which never
# downloads a browser of its own. NEMO_RL_THEORY_CHROMIUM may name another Chromium binary.
if [ -n "${NEMO_RL_THEORY_CHROMIUM:-}" ]; then
    if [ ! -x "$NEMO_RL_THEORY_CHROMIUM" ]; then
        echo "error: NEMO_RL_THEORY_CHROMIUM=$NEMO_RL_THEORY_CHROMIUM is not an executable file" >&2
        exit 1
    fi
elif ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: Chromium is missing; the browser tests (nox -s browser) need Debian's chromium." >&2
        echo "       Install it as root: apt-get install --no-install-recommends chromium fonts-liberation" >&2
        echo "       (or run this script as root), or set NEMO_RL_THEORY_CHROMIUM to a Chromium binary." >&2
        exit 1
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: Chromium is missing and there is no apt-get to install Debian's chromium;" >&2
        echo "       install a Chromium and set NEMO_RL_THEORY_CHROMIUM to it" >&2
        exit 1
    fi
    echo "Installing Debian's chromium for the browser tests (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium fonts-liberation fonts-dejavu-core >/dev/null
fi
echo "chromium: $("${NEMO_RL_THEORY_CHROMIUM:-chromium}" --version 2>/dev/null || echo 'installed')"

# promtool (Debian's prometheus package) checks the alerting rules of the production-deployment
# pages (docs/advanced/production-deployment/alerts/) with `promtool test rules`. Only the
# command-line tool is used; no Prometheus server is started.
if ! command -v promtool >/dev/null 2>&1 && { [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; }; then
    echo "warning: promtool is missing, so the alert-rule tests are skipped; install Debian's" >&2
    echo "         prometheus package as root (apt-get install --no-install-recommends prometheus)" >&2
elif ! command -v promtool >/dev/null 2>&1; then
    echo "Installing Debian's prometheus package for promtool (apt-get)"
    apt-get update -qq
    # The package enables a Prometheus service listening on all interfaces; forbid service starts
    # during the install (policy-rc.d exit 101) so that only the binaries arrive.
    no_start=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        no_start=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    if [ -n "$no_start" ]; then rm -f /usr/sbin/policy-rc.d; fi
fi
command -v promtool >/dev/null 2>&1 && echo "$(promtool --version 2>&1 | head -n 1)"

if [ "${1:-}" = "--install-only" ]; then
    exit 0
fi

# Main job: build the site (executing every page) and check it works offline.
.venv/bin/nox -s docs
echo "Site built: open docs/_build/html/index.html"
