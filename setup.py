"""Builds the one native extension, ``umlog._native.core`` (Cython + csrc/).

Switches (environment variables):
  UMLOG_DEBUG=1     -O0 -g, Cython line tracing, ``UMLOG_DEBUG`` invariants on
  UMLOG_SANITIZE=1  AddressSanitizer + UBSan (run with LD_PRELOAD of libasan)
  UMLOG_ANNOTATE=1  write Cython's HTML annotation next to each .pyx
"""

import os
import platform

import setuptools
from Cython.Build import cythonize
from setuptools import Extension, setup

if int(setuptools.__version__.split(".")[0]) < 77:
    # Older setuptools (the dev venv has 65) rejects pyproject.toml's SPDX
    # license string; `build_ext --inplace` needs no project metadata.
    from setuptools.config import pyprojecttoml

    pyprojecttoml.apply_configuration = lambda dist, *args, **kwargs: dist

DEBUG = os.environ.get("UMLOG_DEBUG") == "1"
SANITIZE = os.environ.get("UMLOG_SANITIZE") == "1"
ANNOTATE = os.environ.get("UMLOG_ANNOTATE") == "1"

extra_compile_args = ["-std=gnu11", "-fno-strict-aliasing"]
extra_link_args = []
define_macros = [("UMLOG_DEBUG", "1" if DEBUG else "0")]

if DEBUG:
    extra_compile_args += ["-O0", "-g"]
    define_macros.append(("CYTHON_TRACE", "1"))
else:
    extra_compile_args += ["-O3"]

if SANITIZE:
    flags = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    extra_compile_args += flags
    extra_link_args += flags

machine = platform.machine().lower()
# The hardware CRC32C paths are chosen at run time (cpuid / getauxval), so the
# extension still runs on a CPU without them; only the functions that use the
# instructions are compiled with the target attribute (see csrc/crc32c.c).

extensions = [
    Extension(
        "umlog._native.core",
        ["umlog/_native/core.pyx", "csrc/crc32c.c", "csrc/crc32.c"],
        include_dirs=["csrc", "umlog/_native"],
        define_macros=define_macros,
        extra_compile_args=extra_compile_args,
        extra_link_args=extra_link_args,
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        annotate=ANNOTATE,
        compile_time_env={"UMLOG_DEBUG": DEBUG},
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
            "linetrace": DEBUG,
        },
    ),
)
