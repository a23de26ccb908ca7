"""Hydra SearchPathPlugin: every Hydra app in an environment where launcher is installed can compose
launcher's config groups (storage, dataset, split, cluster, transform, loader) from its own
config.yaml, e.g.

    defaults:
      - storage: lustre
      - transform: randaugment
      - loader: default
      - _self_

and override them on its command line (`transform.train_crop_size=176 loader.batch_size=128`).
Hydra finds this module through the `hydra_plugins` namespace package; it appends
`pkg://launcher.conf` to the search path (after the app's own folders, so the app's files win)
and registers launcher's schemas (`/schema/<group>`), which launcher's options start from.
"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

PROVIDER = "launcher"
PATH = "pkg://launcher.conf"


class LauncherSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from launcher.config import register_configs

        register_configs()
        if all(element.path != PATH for element in search_path.get_path()):
            search_path.append(provider=PROVIDER, path=PATH)
