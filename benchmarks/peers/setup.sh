#!/usr/bin/env bash
# The peers' virtualenv for benchmarks/peers.py: RecBole 1.2.1 and RecTools (its SASRec)
# on the CPU build of torch 2.13.0. It lives OUTSIDE the project and never enters
# recbert's dependencies. Idempotent: a finished set-up is stamped and not redone.
#
#   bash benchmarks/peers/setup.sh                    # venv in ~/.cache/recbert-peers/venv
#   PEER_VENV=/some/dir bash benchmarks/peers/setup.sh
#
# Order matters:
# 1. torch==2.13.0 first: a plain torch requirement would pull the multi-GB CUDA build.
# 2. recbole==1.2.1 with numpy==1.26.4 and pandas<3 (RecBole 1.2.1 predates numpy 2 and
#    pandas 3); its own requirements bring ray 2.6.3, thop, tensorboard, plotly, ...
# 3. rectools[torch] beside it, torch and numpy held; when pip cannot resolve that, into
#    "$PEER_VENV-rectools" instead. "$PEER_VENV/rectools.status" names the venv holding
#    RecTools, or says why it did not install.
# 4. setuptools<70 last: ray 2.6.3 (which recbole.quick_start imports) needs pkg_resources,
#    gone from current setuptools. torch 2.13 declares setuptools>=77.0.3 (used only to
#    build C++ extensions), so pip warns about that conflict here: expected, harmless for
#    CPU training.
set -euo pipefail

PEER_VENV="${PEER_VENV:-$HOME/.cache/recbert-peers/venv}"
PYTHON="${PYTHON:-python3.11}"
TORCH="torch==2.13.0"
STAMP="$PEER_VENV/.peers-setup"
SELF_HASH="$(sha256sum "$0" | cut -d' ' -f1)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$SELF_HASH" ]; then
    echo "peer venv ready: $PEER_VENV; rectools: $(cat "$PEER_VENV/rectools.status")"
    exit 0
fi

pip_install() {  # pip_install VENV ARGS...: quiet, without this machine's index-location noise
    local venv="$1"; shift
    "$venv/bin/python" -m pip install -q "$@" 2> >(grep -v '^WARNING: Location' >&2)
}

new_venv() {  # new_venv DIR: a venv with CPU torch
    [ -x "$1/bin/python" ] || "$PYTHON" -m venv "$1"
    pip_install "$1" "$TORCH"
}

new_venv "$PEER_VENV"
pip_install "$PEER_VENV" "recbole==1.2.1" "numpy==1.26.4" "pandas<3" "$TORCH"

held="$(mktemp)"
trap 'rm -f "$held" "$held.err"' EXIT
printf '%s\n' "$TORCH" "numpy==1.26.4" > "$held"
status="$PEER_VENV/rectools.status"
if pip_install "$PEER_VENV" -c "$held" "rectools[torch]" 2> "$held.err"; then
    echo "$PEER_VENV" > "$status"
else
    echo "rectools[torch] does not install beside recbole: $(tail -n 3 "$held.err" | tr '\n' ' ')"
    echo "trying its own venv $PEER_VENV-rectools"
    new_venv "$PEER_VENV-rectools"
    if pip_install "$PEER_VENV-rectools" -c "$held" "rectools[torch]" 2> "$held.err"; then
        echo "$PEER_VENV-rectools" > "$status"
    else
        echo "not installed: $(tail -n 3 "$held.err" | tr '\n' ' ')" > "$status"
    fi
fi
pip_install "$PEER_VENV" "setuptools<70"  # warns that torch wants setuptools>=77 (see above)

"$PEER_VENV/bin/python" -W ignore -c "
import numpy, recbole, torch
from recbole.quick_start import run_recbole
print('recbole', recbole.__version__, 'torch', torch.__version__, 'numpy', numpy.__version__)"
rectools_venv="$(cat "$status")"
if [ -d "$rectools_venv" ]; then
    "$rectools_venv/bin/python" -W ignore -c "
import rectools
from rectools.models import SASRecModel
print('rectools', rectools.__version__)"
fi
echo "rectools: $rectools_venv"
echo "$SELF_HASH" > "$STAMP"
