"""omnibind_ros: multimodal recognition that keeps working while sensors are hot-plugged.

The generated interfaces (``omnibind_ros.msg`` / ``omnibind_ros.srv``) are installed by CMake into
the environment's site-packages, while the Python sources may be installed elsewhere (an editable
pip install points at the source tree). ``extend_path`` merges every ``omnibind_ros`` directory on
``sys.path`` into this package so both halves import as one.
"""
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)

__version__ = "0.1.0"
