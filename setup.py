"""pip install path of omnibind_ros (the ROS 2 path builds with CMakeLists.txt / colcon).

Dependencies are listed in requirements/*.txt and installed, pinned by
requirements/constraints.txt, by scripts/setup.sh; they are repeated here loosely so a plain
``pip install .`` into an environment that already has ROS 2 gets the Python side.
"""
from pathlib import Path

from setuptools import find_packages, setup


def requirements(name: str) -> list[str]:
    lines = (Path(__file__).parent / "requirements" / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setup(
    name="omnibind_ros",
    version="0.1.0",
    description="ROS 2 multimodal recognition that keeps working while sensors are hot-plugged",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["omnibind_ros", "omnibind_ros.*"]),
    package_data={"omnibind_ros": ["py.typed"]},
    install_requires=requirements("base.txt"),
    extras_require={"dev": requirements("dev.txt")},
    entry_points={
        "console_scripts": [
            "omnibind-sim = omnibind_ros.sim.cli:main",
            "omnibind-demo = omnibind_ros.tools.demo:main",
            "omnibind-perception = omnibind_ros.ros.perception_node:main",
            "omnibind-sim-sensors = omnibind_ros.ros.sim_sensors_node:main",
            "omnibind-bringup = omnibind_ros.tools.bringup:main",
            "omnibind-bag = omnibind_ros.bag.cli:main",
            "omnibind-engines = omnibind_ros.tools.engines_cli:main",
        ],
    },
)
