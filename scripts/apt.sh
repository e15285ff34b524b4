#!/usr/bin/env bash
# Sourced by setup.sh and install-peers.sh: apt_install WHO PACKAGE... installs Debian/Ubuntu
# packages with apt-get (through sudo when not root), or stops with a message naming them and
# saying how to install them by hand (WHO starts each line: "setup", "install-peers").

apt_fail() {
    local who="$1" why="$2"
    shift 2
    echo "$who: cannot install $*: $why" >&2
    echo "$who: install them by hand, e.g.: sudo apt-get install -y $*" >&2
    exit 1
}

apt_install() {
    local who="$1"
    shift
    if ! command -v apt-get >/dev/null 2>&1; then
        apt_fail "$who" "apt-get not found (this script knows Debian/Ubuntu packages only)" "$@"
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            apt_fail "$who" "not root and sudo is not available" "$@"
        fi
    fi
    echo "$who: installing $*" >&2
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq || apt_fail "$who" "apt-get update failed" "$@"
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
        || apt_fail "$who" "apt-get install failed" "$@"
}
