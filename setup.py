"""pip install --no-build-isolation .  (Debian's pip and setuptools; see README)

The C++ parts are built by CMake (the same CMakeLists.txt as scripts/build.sh, without the
C++ tests) into build-pip/, and the two libraries they produce, the torch ops
(liblowbit_ops.so) and the Python extension (lowbit._C), are installed inside the lowbit
package, which finds them through an $ORIGIN rpath. The `lowbit` command is lowbit.cli.
"""
import glob
import os
import shutil
import subprocess
import sys

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))
# the interpreter itself, not a venv's link to it: a reused build folder must not keep a
# path that disappears with the venv
PYTHON = os.path.realpath(sys.executable)


class BuildWithCMake(build_py):
    def run(self):
        # LOWBIT_CMAKE_BUILD_DIR reuses an existing build folder (the test suite passes build/)
        build = os.environ.get("LOWBIT_CMAKE_BUILD_DIR") or os.path.join(ROOT, "build-pip")
        subprocess.check_call(["cmake", "-S", ROOT, "-B", build, "-DCMAKE_BUILD_TYPE=Release",
                               "-DLOWBIT_BUILD_TESTS=OFF", f"-DPython3_EXECUTABLE={PYTHON}"]
                              + (["-G", "Ninja"] if shutil.which("ninja") else []))
        subprocess.check_call(["cmake", "--build", build, "-j", str(os.cpu_count() or 2),
                               "--target", "_C", "lowbit_ops"])
        super().run()
        dest = os.path.join(self.build_lib, "lowbit")
        for lib in glob.glob(os.path.join(ROOT, "python", "lowbit", "*.so")):
            shutil.copy2(lib, dest)


setup(
    name="lowbit",
    version="0.1.0",
    description="Post-training quantization for PyTorch models with a C++ engine (AMCT-compatible API)",
    package_dir={"": "python"},
    packages=find_packages("python"),
    package_data={"lowbit": ["*.so"]},
    python_requires=">=3.9",
    entry_points={"console_scripts": ["lowbit = lowbit.cli:main"]},
    cmdclass={"build_py": BuildWithCMake},
    zip_safe=False,
)
