"""omnibind_train: training for omnibind_ros (seed 000 OmniBind: LiT stage 0, CAD, AF).

Imports point one way: this package uses ``omnibind_ros.core`` and ``omnibind_ros.sim`` and never
the ROS client library (a test scans for it); the runtime finds this package's torch module
builder through an entry point (:mod:`.models.build`), never by import. Sub-packages:
:mod:`.models` (encoders, registry, fusion heads), :mod:`.losses`, :mod:`.trainers`,
:mod:`.data` (data set, preprocessing, feature cache), :mod:`.pipeline` (config, workspace,
stages), :mod:`.evaluation` (tables, report, plots), :mod:`.export` (model bundles),
:mod:`.testing` (the tiny test bundle) and :mod:`.cli`.
"""
__version__ = "0.1.0"
