# Source me: loopback-only ROS 2 environment for this shell (or a Makefile recipe).
#
#   source scripts/ros_env.sh [--large-messages] [--domain-id N] [--log-dir DIR]
#
# Puts .venv/bin first on PATH and exports what omnibind_ros.ros.env.ensure_safe_ros_env() sets:
# ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, ROS_LOG_DIR, AMENT_PREFIX_PATH, optionally
# ROS_DOMAIN_ID and the Fast DDS shared-memory profile; non-loopback ROS_STATIC_PEERS /
# ROS_DISCOVERY_SERVER are unset. One implementation (the Python module) for shells and tools.
_omnibind_repo=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)
_omnibind_exports=$(PYTHONPATH="$_omnibind_repo${PYTHONPATH:+:$PYTHONPATH}" \
    "$_omnibind_repo/.venv/bin/python" -m omnibind_ros.ros.env "$@") || {
    echo "ros_env.sh: could not compute the environment (run scripts/setup.sh first?)" >&2
    unset _omnibind_repo _omnibind_exports
    return 1 2>/dev/null || exit 1
}
eval "$_omnibind_exports"
export VIRTUAL_ENV="$_omnibind_repo/.venv"
case ":$PATH:" in
    *":$VIRTUAL_ENV/bin:"*) ;;
    *) export PATH="$VIRTUAL_ENV/bin:$PATH" ;;
esac
unset _omnibind_repo _omnibind_exports
