"""The process environment every omnibind_ros tool sets up before it touches ROS.

Pure standard library and importable without rclpy, because it has to run *before* rclpy is
imported: the rmw layer reads the discovery settings from the environment when the first context
is initialised, and by convention the project sets them before the import so nothing in between
(a plugin, a fixture, an import side effect) can create a participant with the defaults.

What it guarantees:

* ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``: by default every node sends DDS discovery multicast
  out of every interface; with LOCALHOST nothing leaves loopback. Static peers and discovery
  servers that point at other hosts are removed for the same reason.
* ``ROS_LOG_DIR``: a temporary directory instead of ``~/.ros/log``, so tests and tools leave no
  logs behind in the user's home.
* ``ROS_DOMAIN_ID`` when asked: separate domains isolate processes running concurrently.
* ``FASTDDS_DEFAULT_PROFILES_FILE`` (``FASTRTPS_...`` on Fast DDS 2 distros) when asked
  (``large_messages=True``): the shared-memory profile in ``config/fastdds_localhost.xml``
  without which best-effort messages above ~512 KB between processes are silently dropped.
* ``AMENT_PREFIX_PATH``: the PyPI wheels never set it, so ``get_package_share_directory`` and the
  ament index would find nothing; it defaults to ``sys.prefix`` (the venv holding the wheels).

A robot's own deployment chooses its discovery range itself: with
``OMNIBIND_KEEP_DISCOVERY_RANGE=1`` in the environment the discovery variables are left exactly as
they are (with a warning), everything else still applies. Development, test and CI tooling never
set it. The nodes log :func:`discovery_summary` at start-up: the effective range, static peers
and domain, and how to open them.

Also usable from a shell: ``eval "$(python -m omnibind_ros.ros.env --large-messages)"`` (what
``scripts/ros_env.sh`` does).
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import shlex
import sys
import tempfile
import warnings
from collections.abc import MutableMapping
from pathlib import Path

__all__ = [
    "DISCOVERY_RANGE_VAR",
    "KEEP_DISCOVERY_RANGE_VAR",
    "UnsafeRosEnvironmentError",
    "discovery_summary",
    "ensure_safe_ros_env",
    "fastdds_profile_path",
    "reserve_domain_id",
]

DISCOVERY_RANGE_VAR = "ROS_AUTOMATIC_DISCOVERY_RANGE"
#: Opt-out for real deployments that need discovery beyond this machine.
KEEP_DISCOVERY_RANGE_VAR = "OMNIBIND_KEEP_DISCOVERY_RANGE"
#: Fast DDS 3 (Kilted and later) reads the first, Fast DDS 2 (Humble..Jazzy) the second.
FASTDDS_PROFILE_VARS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
#: Distros that ship Fast DDS 2. Setting both names is no option: Kilted's rmw then warns on
#: every participant that the old name is deprecated.
_FASTDDS2_DISTROS = ("humble", "iron", "jazzy")
#: Variables that can make a participant contact other hosts even under LOCALHOST: rmw adds
#: ROS_STATIC_PEERS as initial peers, and Fast DDS itself reads ROS_DISCOVERY_SERVER.
_REMOTE_PEER_VARS = ("ROS_STATIC_PEERS", "ROS_DISCOVERY_SERVER")
#: Every variable ensure_safe_ros_env may set; it reports their effective values.
MANAGED_VARS = (
    DISCOVERY_RANGE_VAR,
    "ROS_LOG_DIR",
    "ROS_DOMAIN_ID",
    *FASTDDS_PROFILE_VARS,
    "AMENT_PREFIX_PATH",
)
#: Fast DDS maps domain d to UDP ports 7400 + 250 d + ...; above 232 the ports overflow.
MAX_DOMAIN_ID = 232
PROFILE_RELPATH = Path("config") / "fastdds_localhost.xml"
_PACKAGE = "omnibind_ros"
#: Discovery variables ensure_safe_ros_env changed in this process: name -> value before
#: ("" = unset), for discovery_summary.
_forced_from: dict[str, str] = {}


class UnsafeRosEnvironmentError(RuntimeError):
    """rclpy was imported before the discovery range was restricted to this machine."""


def ensure_safe_ros_env(
    *,
    domain_id: int | None = None,
    log_dir: str | os.PathLike[str] | None = None,
    large_messages: bool = False,
    environ: MutableMapping[str, str] | None = None,
) -> dict[str, str]:
    """Make the environment safe and complete for ROS 2 before rclpy is imported.

    Parameters
    ----------
    domain_id : ``ROS_DOMAIN_ID`` to set (0..232), overriding any existing value; ``None`` keeps
        the current one (ROS's default is 0).
    log_dir : ``ROS_LOG_DIR`` to set, overriding any existing value; ``None`` keeps an existing
        value or, if there is none, uses a private directory under the system temp dir.
    large_messages : also load the shared-memory Fast DDS profile
        (``config/fastdds_localhost.xml``) unless a profile file is already configured.
    environ : mapping to edit instead of ``os.environ``, e.g. the environment of a child process
        (then the rclpy check below does not apply: the child imports rclpy itself).

    Returns
    -------
    dict : effective values of the variables this function manages (those that are set).

    Raises
    ------
    UnsafeRosEnvironmentError : rclpy is already imported in this process and the discovery range
        is not LOCALHOST: too late to make this process safe; set the variable before the import.
    ValueError : ``domain_id`` out of range.
    FileNotFoundError : ``large_messages`` and the profile cannot be found.
    """
    env = os.environ if environ is None else environ
    is_process_env = environ is None or environ is os.environ
    rclpy_loaded = is_process_env and "rclpy" in sys.modules
    if domain_id is not None and not 0 <= int(domain_id) <= MAX_DOMAIN_ID:
        raise ValueError(f"ROS_DOMAIN_ID must be in 0..{MAX_DOMAIN_ID}, got {domain_id}")

    if env.get(KEEP_DISCOVERY_RANGE_VAR, "") not in ("", "0"):
        remote = [var for var in _REMOTE_PEER_VARS
                  if env.get(var) and not _all_loopback(env[var])]
        if env.get(DISCOVERY_RANGE_VAR) != "LOCALHOST" or remote:  # else nothing to warn of
            warnings.warn(
                f"{KEEP_DISCOVERY_RANGE_VAR} is set: leaving {DISCOVERY_RANGE_VAR}="
                f"{env.get(DISCOVERY_RANGE_VAR, '<unset>')}"
                + "".join(f", {var}={env[var]}" for var in remote)
                + " as they are; DDS discovery may leave this machine.",
                RuntimeWarning, stacklevel=2)
    else:
        before = {var: env.get(var, "") for var in (DISCOVERY_RANGE_VAR, *_REMOTE_PEER_VARS)}
        _restrict_discovery_to_localhost(env, rclpy_loaded)
        if is_process_env:
            _forced_from.update({var: old for var, old in before.items()
                                 if env.get(var, "") != old})

    changed = []
    if log_dir is not None:
        changed += _set(env, "ROS_LOG_DIR", os.fspath(log_dir))
    elif not env.get("ROS_LOG_DIR"):
        changed += _set(env, "ROS_LOG_DIR", _default_log_dir())
    Path(env["ROS_LOG_DIR"]).mkdir(parents=True, exist_ok=True)

    if domain_id is not None:
        changed += _set(env, "ROS_DOMAIN_ID", str(int(domain_id)))

    if large_messages and not any(env.get(var) for var in FASTDDS_PROFILE_VARS):
        # ROS_DISTRO is set by a sourced ROS install; the PyPI wheels (Kilted) leave it unset.
        fastdds2 = env.get("ROS_DISTRO", "").lower() in _FASTDDS2_DISTROS
        var = FASTDDS_PROFILE_VARS[1] if fastdds2 else FASTDDS_PROFILE_VARS[0]
        changed += _set(env, var, str(fastdds_profile_path(env)))

    if not env.get("AMENT_PREFIX_PATH"):
        changed += _set(env, "AMENT_PREFIX_PATH", sys.prefix)

    if rclpy_loaded and changed:
        warnings.warn(
            f"rclpy is already imported: {', '.join(changed)} only apply to contexts initialised "
            "from now on; call ensure_safe_ros_env() before importing rclpy.",
            RuntimeWarning, stacklevel=2)
    return {var: env[var] for var in MANAGED_VARS if env.get(var)}


def _restrict_discovery_to_localhost(env: MutableMapping[str, str], rclpy_loaded: bool) -> None:
    current = env.get(DISCOVERY_RANGE_VAR, "")
    if current != "LOCALHOST":
        if rclpy_loaded:
            raise UnsafeRosEnvironmentError(
                f"rclpy was imported before {DISCOVERY_RANGE_VAR}=LOCALHOST was set (it is "
                f"{current or '<unset>'}): nodes of this process may send DDS discovery off this "
                "machine. Call omnibind_ros.ros.env.ensure_safe_ros_env() before importing rclpy, "
                f"or export {DISCOVERY_RANGE_VAR}=LOCALHOST.")
        if current:
            warnings.warn(
                f"{DISCOVERY_RANGE_VAR} was {current!r}; omnibind_ros tooling runs with LOCALHOST "
                f"(set {KEEP_DISCOVERY_RANGE_VAR}=1 to keep your range).",
                RuntimeWarning, stacklevel=3)
        env[DISCOVERY_RANGE_VAR] = "LOCALHOST"
    for var in _REMOTE_PEER_VARS:
        value = env.get(var, "")
        if value and not _all_loopback(value):
            if rclpy_loaded:
                raise UnsafeRosEnvironmentError(
                    f"rclpy is already imported and {var}={value!r} names other hosts.")
            warnings.warn(f"removing {var}={value!r}: it names hosts other than this one.",
                          RuntimeWarning, stacklevel=3)
            del env[var]


def discovery_summary(environ: MutableMapping[str, str] | None = None) -> str:
    """One line for a node's start-up log: the effective DDS discovery settings, who chose
    them, and how a multi-host robot opens them (the project's tooling keeps LOCALHOST)."""
    env = os.environ if environ is None else environ
    forced = _forced_from if environ is None or environ is os.environ else {}
    values = [f"{DISCOVERY_RANGE_VAR}={env.get(DISCOVERY_RANGE_VAR) or '<unset: SUBNET>'}",
              f"ROS_STATIC_PEERS={env.get('ROS_STATIC_PEERS') or '<none>'}",
              f"ROS_DOMAIN_ID={env.get('ROS_DOMAIN_ID') or '0'}"]
    if env.get("ROS_DISCOVERY_SERVER"):
        values.append(f"ROS_DISCOVERY_SERVER={env['ROS_DISCOVERY_SERVER']}")
    text = "DDS discovery: " + ", ".join(values)
    if env.get(KEEP_DISCOVERY_RANGE_VAR, "") not in ("", "0"):
        return text + f" (kept as the environment set them: {KEEP_DISCOVERY_RANGE_VAR}=1)"
    changed = "; ".join(f"{var} was {old or '<unset>'}" for var, old in forced.items())
    return (text + " (omnibind_ros keeps discovery on this machine"
            + (f"; {changed}" if changed else "") + "). For a multi-host robot export "
            f"{KEEP_DISCOVERY_RANGE_VAR}=1 with {DISCOVERY_RANGE_VAR}=SUBNET or "
            "ROS_STATIC_PEERS=<host;host> (launch: discovery_range:=SUBNET, "
            "static_peers:=...)")


def _all_loopback(value: str) -> bool:
    """True if every entry of a ';'-separated peer/server list is this machine."""
    for entry in filter(None, (part.strip() for part in value.split(";"))):
        host = entry
        if host.startswith("["):  # [::1]:11811
            host = host[1:].partition("]")[0]
        elif host.count(":") == 1:  # 127.0.0.1:11811
            host = host.partition(":")[0]
        if host.lower() == "localhost":
            continue
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return False
        except ValueError:  # a host name: cannot tell without resolving it
            return False
    return True


def _set(env: MutableMapping[str, str], var: str, value: str) -> list[str]:
    if env.get(var) == value:
        return []
    env[var] = value
    return [var]


def _default_log_dir() -> str:
    """A per-user directory under the temp dir: stable (no new dir per process), private."""
    uid = os.getuid() if hasattr(os, "getuid") else os.getpid()
    path = Path(tempfile.gettempdir()) / f"omnibind_ros-{uid}" / "log"
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if hasattr(os, "getuid") and path.parent.stat().st_uid != os.getuid():
            raise PermissionError(f"{path.parent} belongs to another user")
        return str(path)
    except OSError:
        # Another user owns the shared name (or the temp dir is odd): a fresh private directory.
        return tempfile.mkdtemp(prefix="omnibind_ros_log_")


def fastdds_profile_path(environ: MutableMapping[str, str] | None = None) -> Path:
    """Locate ``config/fastdds_localhost.xml``: source checkout first, then installed copies.

    The source tree wins so an edited profile takes effect without rebuilding; CMake installs a
    copy to ``share/omnibind_ros/config`` for installs without the sources.
    """
    env = os.environ if environ is None else environ
    candidates = [Path(__file__).resolve().parents[2] / PROFILE_RELPATH]
    prefixes = [p for p in env.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    for prefix in [*prefixes, sys.prefix]:
        candidates.append(Path(prefix) / "share" / _PACKAGE / PROFILE_RELPATH)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        "Fast DDS profile not found; looked at: " + ", ".join(str(c) for c in candidates))


# Keeps the lock files of reserved domain ids open (the reservation lasts as long as the process).
_reservations: dict[int, object] = {}


def reserve_domain_id(low: int = 1, high: int = 100, *, start: int | None = None) -> int:
    """Reserve a ``ROS_DOMAIN_ID`` in ``[low, high]`` that no other process on this machine holds.

    Reservations are advisory file locks under the temp dir, released automatically when the
    process exits (even when killed), so concurrent test runs, demos and benchmarks of several
    users on one machine get disjoint domains and never see each other's nodes. Domain 0 (the
    default every other ROS tool uses) is outside the default range on purpose.

    Parameters
    ----------
    low, high : inclusive range; the default stays within the ids that are safe on Linux
        (0..101: their ports are below the ephemeral port range).
    start : first id to try (wrapping around); default derived from the process id so concurrent
        processes start at different places.

    Raises
    ------
    RuntimeError : every id in the range is reserved.
    """
    if not 0 <= low <= high <= MAX_DOMAIN_ID:
        raise ValueError(f"need 0 <= low <= high <= {MAX_DOMAIN_ID}, got {low}..{high}")
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking, a pid-derived id is the best effort
        return low + (os.getpid() if start is None else start - low) % (high - low + 1)
    lock_dir = Path(tempfile.gettempdir()) / "omnibind_ros_domain_locks"
    lock_dir.mkdir(mode=0o777, exist_ok=True)
    span = high - low + 1
    first = (os.getpid() if start is None else start - low) % span
    for step in range(span):
        domain = low + (first + step) % span
        if domain in _reservations:
            continue
        path = lock_dir / f"{domain}.lock"
        handle = open(path, "a+")  # noqa: SIM115 - stays open as the reservation
        try:
            os.chmod(path, 0o666)  # other users must be able to lock it too
        except OSError:
            pass
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _reservations[domain] = handle
        return domain
    raise RuntimeError(f"all ROS domain ids {low}..{high} are reserved by other processes")


def main(argv: list[str] | None = None) -> int:
    """Print ``export`` lines for a POSIX shell (``eval "$(python -m omnibind_ros.ros.env)"``)."""
    parser = argparse.ArgumentParser(
        prog="python -m omnibind_ros.ros.env",
        description="Print shell exports for a loopback-only ROS 2 environment.")
    parser.add_argument("--domain-id", type=int, default=None,
                        help="ROS_DOMAIN_ID to set (default: keep the current one)")
    parser.add_argument("--log-dir", default=None, help="ROS_LOG_DIR (default: a temp dir)")
    parser.add_argument("--large-messages", action="store_true",
                        help="load the shared-memory Fast DDS profile for big messages")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    effective = ensure_safe_ros_env(domain_id=args.domain_id, log_dir=args.log_dir,
                                    large_messages=args.large_messages, environ=env)
    for var in _REMOTE_PEER_VARS:
        if var in os.environ and var not in env:
            print(f"unset {var}")
    for var, value in effective.items():
        print(f"export {var}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
