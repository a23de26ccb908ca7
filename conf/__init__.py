"""launcher's config groups as the package `launcher.conf`, found as `pkg://launcher.conf`.

Hydra imports this package when a search path names it (our CLI, `launcher.compose_config`,
`launcher.training_config`, or a training repo that writes `hydra.searchpath: [pkg://launcher.conf]`),
so the groups' schemas (`/schema/<group>`, which every option here extends) are registered then, and
only in apps that asked for launcher's groups.
"""

from launcher.config.store import register_configs

register_configs()
