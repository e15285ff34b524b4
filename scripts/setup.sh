#!/usr/bin/env bash
# Create .venv (Python >= 3.11) and install the project editable: scripts/setup.sh [dev|all]
# dev (the default, for the tests): everything, torch, the training stack and [dtls] included
# (the tools that build DTLSSocket come from apt when missing);
# all (for the demo): the protocols, the embedded broker and the shipped models, no torch.
# Quick when nothing changed: the install is skipped while pyproject.toml is the one installed
# with these extras (or with dev, which holds all).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
extra="${1:-dev}"
case "$extra" in
    dev | all) ;;
    *) echo "setup: usage: scripts/setup.sh [dev|all]" >&2; exit 2 ;;
esac

python_ok() {
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

if [ ! -x .venv/bin/python ]; then
    python="${PYTHON:-}"
    if [ -z "$python" ]; then
        for candidate in python3 python3.13 python3.12 python3.11; do
            if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
                python="$candidate"
                break
            fi
        done
    fi
    if [ -z "$python" ] || ! python_ok "$python"; then
        echo "setup: Python >= 3.11 is needed (set PYTHON=/path/to/python3.11)" >&2
        exit 1
    fi
    echo "setup: creating .venv with $("$python" --version 2>&1)" >&2
    "$python" -m venv .venv
fi

if ! python_ok .venv/bin/python; then
    echo "setup: .venv has $(.venv/bin/python --version 2>&1); remove it and rerun" >&2
    exit 1
fi

# The stamp holds pyproject.toml's hash and the extras installed ("HASH dev" or "HASH all"; a
# bare hash was written by the dev-only setup before).
stamp=".venv/.protocol-brain-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
installed="$(cat "$stamp" 2>/dev/null || true)"
up_to_date() {
    case "$installed" in
        "$want" | "$want dev") return 0 ;;
        "$want all") [ "$extra" = all ] ;;
        *) return 1 ;;
    esac
}
# dev holds [dtls], whose DTLSSocket pip builds from source (no wheel): its tinydtls runs
# autoreconf (autoconf, and aclocal from automake), then a C compiler needs the Python headers.
# Installed here, before pip, only when missing.
dtls_build_tools() {
    local packages=() include
    command -v autoreconf >/dev/null 2>&1 || packages+=(autoconf)
    command -v aclocal >/dev/null 2>&1 || packages+=(automake)
    command -v cc >/dev/null 2>&1 || packages+=(gcc libc6-dev)
    include="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
    if [ ! -f "$include/Python.h" ]; then
        # Debian's own Python (under /usr) has its headers in python3.X-dev; another one
        # (pyenv, a build of one's own) ships them itself, and lacking them is not apt's to fix
        if [ "$(.venv/bin/python -c 'import sys; print(sys.base_prefix)')" != /usr ]; then
            echo "setup: $include/Python.h is missing (needed to build DTLSSocket): install" \
                "the headers of the Python that made .venv" >&2
            exit 1
        fi
        packages+=("$(.venv/bin/python -c 'import sys; print("python3.%d-dev" % sys.version_info[1])')")
    fi
    if [ ${#packages[@]} -gt 0 ]; then
        # shellcheck source=scripts/apt.sh
        . scripts/apt.sh
        apt_install setup "${packages[@]}"
    fi
}

if ! up_to_date || ! .venv/bin/python -c 'import gateway, protocols' >/dev/null 2>&1; then
    echo "setup: installing protocol-brain[$extra] into .venv" >&2
    if [ "$extra" = dev ] && ! .venv/bin/python -c 'import DTLSSocket' >/dev/null 2>&1; then
        dtls_build_tools
    fi
    log="$(mktemp)"
    # torch first, pinned: this pin takes the machine's CPU build; any other way of asking for
    # torch (a range, a dependency) may resolve to the CUDA build and gigabytes of packages.
    if [ "$extra" = dev ] && ! .venv/bin/python -c 'import torch' >/dev/null 2>&1 \
        && ! .venv/bin/python -m pip install -q --disable-pip-version-check 'torch==2.13.0' \
            >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "setup: pip install torch==2.13.0 failed" >&2
        exit 1
    fi
    if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extra]" \
        >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "setup: pip install -e '.[$extra]' failed" >&2
        exit 1
    fi
    rm -f "$log"
    echo "$want $extra" >"$stamp"
fi
