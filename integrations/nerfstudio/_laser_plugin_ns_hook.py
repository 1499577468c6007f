"""Start-up hook, run by ``laser_plugin_nerfstudio.pth``: adds ``laser`` to ``ns-process-data``.

The wheel installs this file at the top of site-packages (it must not import ``laser_plugin``,
which pulls in torch, because every Python start runs it). It only puts a finder on
``sys.meta_path``. When, and only when, ``nerfstudio.scripts.process_data`` is imported, the
finder removes itself, lets the normal machinery find and load that module, then calls
``laser_plugin.integrations.nerfstudio.process_data.extend_commands`` on it. If nerfstudio
changes shape, ``extend_commands`` changes nothing; if anything fails, nerfstudio still loads.
Set ``LASER_PLUGIN_NO_NS_HOOK=1`` to disable it.
"""

import os
import sys

_TARGET = "nerfstudio.scripts.process_data"


def _extend(module):
    try:
        from laser_plugin.integrations.nerfstudio.process_data import extend_commands

        extend_commands(module)
    except Exception as exc:  # never break nerfstudio because of us
        sys.stderr.write(
            f"laser-plugin: 'ns-process-data laser' is unavailable ({type(exc).__name__}: {exc})\n"
        )


class _ProcessDataFinder:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != _TARGET:
            return None
        sys.meta_path[:] = [f for f in sys.meta_path if f is not _ProcessDataFinder]  # one shot
        from importlib.util import find_spec

        spec = find_spec(name)  # the real spec, from the finders after us
        loader = getattr(spec, "loader", None)
        exec_module = getattr(loader, "exec_module", None)
        if exec_module is None:
            return spec

        def exec_then_extend(module):
            exec_module(module)
            _extend(module)

        loader.exec_module = exec_then_extend  # this loader instance serves only this import
        return spec


if not os.environ.get("LASER_PLUGIN_NO_NS_HOOK") and _ProcessDataFinder not in sys.meta_path:
    sys.meta_path.insert(0, _ProcessDataFinder)
