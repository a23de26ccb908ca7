"""Only what pyproject.toml cannot say: one clear line for each optional C extension that is skipped."""

import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

SKIPPED = {
    "launcher.data._jpeg": (
        "launcher: skipped the C extension launcher.data._jpeg (no C compiler or no libjpeg headers): the loaders "
        "will decode whole images instead of each crop. To get it, install gcc and libjpeg-turbo's headers "
        "(Debian/Ubuntu: apt-get install gcc libjpeg62-turbo-dev) and reinstall, or install the released wheel."
    ),
    "launcher.archive._tarwalk": (
        "launcher: skipped the C extension launcher.archive._tarwalk (no C compiler): storage.format=tar "
        "indexes archives with the Python header walk, several times slower, with the same results. To get "
        "it, install gcc (Debian/Ubuntu: apt-get install gcc) and reinstall, or install the released wheel."
    ),
}


class OptionalExtensions(build_ext):
    """setuptools skips a failed optional extension with a log line pip hides; say it plainly."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception:
            if not ext.optional:
                raise
            print(SKIPPED[ext.name], file=sys.stderr)


setup(cmdclass={"build_ext": OptionalExtensions})
