"""Build of energyprof._core from csrc/ (C11, one C++ file for the libtorch shim).

libplist-2.0 and sqlite3 are found with pkg-config.  When either is missing the
build stops with a message naming the system package and how to install it.
"""
import glob
import os
import shutil
import subprocess
import sys

import numpy
from setuptools import Extension, setup

# csrc/ is grouped by the data flow (kernels, sources, threads, module); headers are
# included by bare name, so every room is on the include path.
C_ROOMS = ["csrc/kernels", "csrc/sources", "csrc/threads", "csrc/module"]

REQUIRED = {
    # pkg-config name: (what it is, Debian package, Homebrew formula)
    "libplist-2.0": ("libplist", "libplist-dev", "libplist"),
    "sqlite3": ("SQLite", "libsqlite3-dev", "sqlite"),
}


def _fail(msg: str) -> None:
    sys.stderr.write("\n" + "=" * 72 + "\nenergyprof build error: " + msg + "\n" + "=" * 72 + "\n")
    raise SystemExit(1)


def _pkg_config(name: str, what: str, deb: str, brew: str):
    hint = (
        f"{what} development files are missing (pkg-config module '{name}').\n"
        f"  Debian/Ubuntu:  sudo apt-get install {deb} pkg-config\n"
        f"  macOS:          brew install {brew} pkg-config"
    )
    if shutil.which("pkg-config") is None:
        _fail("pkg-config is not installed, so " + name + " cannot be located.\n" + hint)
    try:
        cflags = subprocess.check_output(["pkg-config", "--cflags", name], text=True, stderr=subprocess.PIPE).split()
        libs = subprocess.check_output(["pkg-config", "--libs", name], text=True, stderr=subprocess.PIPE).split()
    except subprocess.CalledProcessError:
        _fail(hint)
    return cflags, libs


def extension() -> Extension:
    cflags, libs = [], []
    for name, (what, deb, brew) in REQUIRED.items():
        c, l = _pkg_config(name, what, deb, brew)
        cflags += c
        libs += l
    sources = sorted(glob.glob("csrc/*/ep_*.c")) + sorted(glob.glob("csrc/*/ep_*.cpp"))
    extra = ["-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
    if os.environ.get("EP_SANITIZE"):
        extra += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g", "-O1"]
        libs += ["-fsanitize=address,undefined"]
    if os.environ.get("EP_DEBUG"):
        extra += ["-g", "-O0"]
    return Extension(
        "energyprof._core",
        sources=sources,
        depends=sorted(glob.glob("csrc/*/ep_*.h")),   # a header change rebuilds the extension
        include_dirs=[*C_ROOMS, numpy.get_include()],
        extra_compile_args=extra,
        extra_link_args=libs + ["-lpthread", "-ldl", "-lstdc++"],  # -lstdc++: the C++ libtorch shim (try/catch)
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_20_API_VERSION"), ("_GNU_SOURCE", "1")],
        language="c",
    )



from setuptools.command.build_ext import build_ext as _build_ext  # noqa: E402


class build_ext(_build_ext):
    """Drop -std=c11 for the C++ shim (gcc warns and g++ rejects it)."""

    def build_extension(self, ext):
        orig = self.compiler._compile

        def _compile(obj, src, ext_, cc_args, extra_postargs, pp_opts):
            if src.endswith(".cpp"):
                extra_postargs = [a for a in extra_postargs if a != "-std=c11"] + ["-std=c++17"]
            return orig(obj, src, ext_, cc_args, extra_postargs, pp_opts)

        self.compiler._compile = _compile
        try:
            super().build_extension(ext)
        finally:
            self.compiler._compile = orig


setup(ext_modules=[extension()], cmdclass={"build_ext": build_ext})
