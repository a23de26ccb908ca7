"""The engine every command shares: units, plans, the runner, dispatch (the one submitit module), the
layout of a root and its state folder, completion records, progress, errors."""
