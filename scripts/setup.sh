#!/usr/bin/env bash
# One idempotent set-up for a fresh Debian/Ubuntu machine with Python 3.11:
#   1. Debian packages the Python wheels need at run/build time (installed when root, else listed);
#   2. .venv with pinned dependencies (ROS 2 Kilted wheels, ML stack, test tools);
#   3. the interfaces in msg/ and srv/ built with cmake against the wheels into .venv, with the
#      executables (lib/omnibind_ros), launch/, config/ and the ament index entry, so that
#      `ros2 launch omnibind_ros ...` works from the venv as from a colcon install;
#   4. omnibind_ros and omnibind_train installed in editable mode.
# Each step records a hash of its inputs in .venv/.omnibind-stamps/ and is skipped when nothing
# changed, so a re-run takes a couple of seconds.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
venv="$repo/.venv"
stamps="$venv/.omnibind-stamps"
python_bin=${PYTHON:-python3.11}
command -v "$python_bin" >/dev/null 2>&1 || python_bin=python3

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
die() { printf '\033[31m[setup] error:\033[0m %s\n' "$*" >&2; exit 1; }

# Hash of the given files' names and contents (missing files hash as empty). `|| true`: cat fails
# on a missing file or an unmatched glob (srv/*.srv while srv/ is empty), and under pipefail that
# would end the script silently inside `h=$(...)`.
inputs_hash() { { printf '%s\n' "$@"; cat "$@" 2>/dev/null || true; } | sha256sum | cut -c1-16; }
step_done() { [[ -f "$stamps/$1" && "$(cat "$stamps/$1")" == "$2" ]]; }
mark_done() { mkdir -p "$stamps"; echo "$2" >"$stamps/$1"; }

check_python() {
    local version
    version=$("$python_bin" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    [[ "$version" == "3.11" ]] || die "Python 3.11 is required (the ROS 2 Kilted wheels are cp311); found $version at $(command -v "$python_bin"). Set PYTHON=/path/to/python3.11."
}

# libusb: open3d's import; libgomp1: open3d/torch OpenMP; cmake/g++: building msg/ and srv/.
debian_packages=(libusb-1.0-0 libgomp1 cmake g++ make)
ensure_debian_packages() {
    local missing=()
    for pkg in "${debian_packages[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        say "installing Debian packages: ${missing[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        die "missing Debian packages: ${missing[*]}. Run: sudo apt-get install -y ${missing[*]}"
    fi
}

ensure_venv() {
    if [[ ! -x "$venv/bin/python" ]]; then
        say "creating $venv"
        "$python_bin" -m venv "$venv"
    fi
}

# pip's own chatter (index warnings, build back-end deprecations) goes to a log, shown on failure.
pip_log="$repo/build/setup-pip.log"
pip_install() {
    mkdir -p "$(dirname "$pip_log")"
    "$venv/bin/python" -m pip install --disable-pip-version-check -q "$@" >>"$pip_log" 2>&1 || {
        grep -v "is ignored: it is neither a file nor a directory" "$pip_log" | tail -40 >&2
        die "pip install failed (full log: $pip_log)"
    }
}

install_dependencies() {
    local h
    h=$(inputs_hash requirements/*.txt)
    step_done deps "$h" && return 0
    say "installing pinned dependencies into .venv (first time: several minutes)"
    pip_install --upgrade pip setuptools wheel
    pip_install -c requirements/constraints.txt \
        -r requirements/ros.txt -r requirements/base.txt -r requirements/train.txt -r requirements/dev.txt
    mark_done deps "$h"
}

build_interfaces() {
    local h
    # launch/ and config/ are installed to share/omnibind_ros too: a changed file is re-installed.
    h=$(inputs_hash CMakeLists.txt cmake/*.cmake package.xml msg/*.msg srv/*.srv launch/* \
        config/* config/*/* "$stamps/deps")
    step_done interfaces "$h" && return 0
    say "building msg/ and srv/, installing launch/ and config/ into .venv (cmake + rosidl)"
    local build="$repo/build/interfaces"
    mkdir -p "$build"
    # The wheels never set AMENT_PREFIX_PATH; ament's CMake needs it to find the packages.
    (
        export AMENT_PREFIX_PATH="$venv" VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH"
        cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
            -DCMAKE_INSTALL_PREFIX="$venv" -DCMAKE_PREFIX_PATH="$venv" \
            -DPython3_EXECUTABLE="$venv/bin/python" -DOMNIBIND_INSTALL_PYTHON_PACKAGE=OFF \
            >"$build/configure.log" 2>&1 || { tail -40 "$build/configure.log"; exit 1; }
        cmake --build "$build" -j "$(nproc)" >"$build/build.log" 2>&1 || { tail -40 "$build/build.log"; exit 1; }
        cmake --install "$build" >"$build/install.log" 2>&1 || { tail -40 "$build/install.log"; exit 1; }
    ) || die "interface build failed (logs in $build)"
    mark_done interfaces "$h"
}

# Wire-compatible stand-ins for interface packages real drivers publish (event_camera_msgs,
# audio_common_msgs): the PyPI wheels have none. Each is built only when the package is not
# importable already (a real one wins); ours carry "Wire-compatible stand-in" in package.xml.
build_fallback_interfaces() {
    local h dir pkg build
    h=$(inputs_hash cmake/*.cmake interfaces/*/CMakeLists.txt interfaces/*/package.xml \
        interfaces/*/msg/*.msg "$stamps/deps")
    step_done fallback_interfaces "$h" && return 0
    for dir in "$repo"/interfaces/*/; do
        pkg=$(basename "$dir")
        if ! grep -qs "Wire-compatible stand-in" "$venv/share/$pkg/package.xml" \
                && "$venv/bin/python" -c "import $pkg.msg" 2>/dev/null; then
            say "$pkg is installed: using it, not the stand-in"
            continue
        fi
        say "building the stand-in $pkg into .venv (cmake + rosidl)"
        build="$repo/build/interfaces-$pkg"
        mkdir -p "$build"
        (
            export AMENT_PREFIX_PATH="$venv" VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH"
            cmake -S "$dir" -B "$build" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
                -DCMAKE_INSTALL_PREFIX="$venv" -DCMAKE_PREFIX_PATH="$venv" \
                -DPython3_EXECUTABLE="$venv/bin/python" \
                >"$build/configure.log" 2>&1 || { tail -40 "$build/configure.log"; exit 1; }
            cmake --build "$build" -j "$(nproc)" >"$build/build.log" 2>&1 || { tail -40 "$build/build.log"; exit 1; }
            cmake --install "$build" >"$build/install.log" 2>&1 || { tail -40 "$build/install.log"; exit 1; }
        ) || die "$pkg stand-in build failed (logs in $build)"
    done
    mark_done fallback_interfaces "$h"
}

install_project() {
    local h
    h=$(inputs_hash setup.py setup.cfg pyproject.toml training/pyproject.toml "$stamps/deps")
    step_done project "$h" && return 0
    say "installing omnibind_ros and omnibind_train (editable)"
    pip_install --no-deps --no-build-isolation -e "$repo"
    [[ -f training/pyproject.toml ]] && pip_install --no-deps --no-build-isolation -e "$repo/training"
    mark_done project "$h"
}

main() {
    local t0=$SECONDS
    check_python
    ensure_debian_packages
    ensure_venv
    install_dependencies
    build_interfaces
    build_fallback_interfaces
    install_project
    say "ready in $((SECONDS - t0)) s (venv: $venv)"
}
main "$@"
