"""Ecosystem adapters (Rerun, viser, nerfstudio), imported as ``laser_plugin.integrations``."""
