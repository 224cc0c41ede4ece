# Shared by scripts/*: find a Python >= 3.12 and keep .venv installed with the project.
# Sourced, not run. Sets VENV.

VENV="${QWEN_VENV:-$PWD/.venv}"

_py_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; }

find_python() {
    local cand
    for cand in python3.13 python3.12 python3; do
        if command -v "$cand" >/dev/null 2>&1 && _py_ok "$cand"; then
            command -v "$cand"; return 0
        fi
    done
    # pyenv shims refuse versions that are installed but not selected; ask pyenv directly.
    if command -v pyenv >/dev/null 2>&1; then
        local root ver
        root="$(pyenv root)"
        for ver in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.(1[2-9]|[2-9][0-9])(\.|$)' | sort -rV); do
            if _py_ok "$root/versions/$ver/bin/python"; then
                echo "$root/versions/$ver/bin/python"; return 0
            fi
        done
    fi
    return 1
}

ensure_venv() {
    local stamp="$VENV/.installed-stamp" py
    if [ ! -x "$VENV/bin/python" ] || ! _py_ok "$VENV/bin/python"; then
        if ! py="$(find_python)"; then
            echo "error: qwen-oauth-mitm needs Python 3.12 or newer (mitmproxy 12 requires it)." >&2
            echo "       Install one (python.org, your package manager, or 'pyenv install 3.12')" >&2
            echo "       and make python3.12 or python3.13 available on PATH." >&2
            exit 1
        fi
        echo "== creating $VENV with $py"
        rm -rf "$VENV"
        "$py" -m venv "$VENV"
    fi
    # Reinstall only when pyproject.toml changed since the last install.
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        echo "== installing qwen-oauth-mitm[test] into $VENV"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[test]"
        touch "$stamp"
    fi
}
